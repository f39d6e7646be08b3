package handlers

import (
	"strconv"
	"unicode/utf8"
)

// maxEcho bounds how much of a client's input (a path, a parameter, a
// header) is echoed into an error message or a log line. A hostile client
// can send URLs of hundreds of kilobytes; echoing them whole would let it
// amplify its traffic into the response and flood the logs. 256 bytes keep
// every legitimate value whole: a repository name is at most 255
// characters, a tag 128, a sha512 digest 135.
const maxEcho = 256

// clip returns s cut to maxEcho bytes (at a character boundary), marked as
// cut and saying how long it was, or s itself when it is short enough.
func clip(s string) string { return clipTo(s, maxEcho) }

// clipTo is clip with a limit of n bytes.
func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…(cut, " + strconv.Itoa(len(s)) + " bytes in all)"
}
