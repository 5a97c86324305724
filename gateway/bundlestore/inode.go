package bundlestore

import (
	"os"
	"syscall"
)

// inodeOf identifies the file behind a path, so that a bundle renamed into
// place with the same size and modification time is still noticed.
func inodeOf(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
