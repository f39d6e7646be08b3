# The berth image: one static binary on a distroless base (no shell).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/berth ./cmd/berth

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/berth /berth
EXPOSE 5000
ENTRYPOINT ["/berth"]
CMD ["serve"]
HEALTHCHECK --interval=10s --timeout=5s --retries=3 CMD ["/berth", "healthcheck"]
