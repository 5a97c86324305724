package bundle

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to a temporary file in the same directory,
// syncs it, renames it into place and syncs the directory, so that readers
// (a gateway watching a bundle file) never see a half-written file and the
// new file survives a crash once the call returns. It is the one way
// Gatehouse replaces a file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	_, err := WriteFileDurable(path, data, mode)
	return err
}

// WriteFileDurable is WriteFileAtomic that also says whether the new file
// is in place when it fails: renamed is true when only the directory's
// sync failed (the new content is visible, but may not survive a crash).
func WriteFileDurable(path string, data []byte, mode os.FileMode) (renamed bool, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	if err := SyncDir(dir); err != nil {
		return true, fmt.Errorf("syncing %s: %w", dir, err)
	}
	return true, nil
}

// SyncDir makes a directory's entries (files created, renamed or removed)
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
