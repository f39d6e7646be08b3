// Command gentree writes a reference registry's filesystem storage tree of
// any size directly (see internal/regtree.Generate), for timing berth
// import on a registry of realistic shape without pushing it first:
//
//	go run ./tools/gentree -root /tmp/tree -repos 1000 -tags 10
//	berth import --from-dir /tmp/tree
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/berth-registry/berth/internal/regtree"
)

func main() {
	root := flag.String("root", "", "directory to write the tree into (the registry's rootdirectory)")
	repos := flag.Int("repos", 1000, "repositories")
	tags := flag.Int("tags", 10, "tags per repository")
	base := flag.Int("base-size", 64<<10, "bytes of the base layer every repository shares")
	layer := flag.Int("layer-size", 4<<10, "bytes of each image's own layer")
	flag.Parse()
	if *root == "" {
		fmt.Fprintln(os.Stderr, "gentree: -root is required")
		os.Exit(2)
	}
	start := time.Now()
	if err := regtree.Generate(*root, *repos, *tags, *base, *layer); err != nil {
		fmt.Fprintln(os.Stderr, "gentree:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %d repositories, %d tags in %s\n", *repos, *repos**tags, time.Since(start).Round(time.Millisecond))
}
