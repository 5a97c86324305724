package recorder

import (
	"os"

	"golang.org/x/sys/unix"
)

// The journal's batches overwrite zeros written ahead of them (see the
// journal's doc comment for why and what it measured).

// zeroChunk is how far ahead of the entries the journal is zeroed: 256 KiB
// of zeros take about 0.3 ms to write here, once per 800 or so entries.
const zeroChunk = 256 << 10

// zeros is a chunk of zeros to write ahead, aligned for direct I/O.
var zeros = alignedBuffer(zeroChunk)

// writeFile writes a batch at the journal's end, and zeros ahead of it
// when it reaches past the zeros already there. A failed batch write is
// returned (the caller checkpoints, which truncates whatever half of it
// was written); zeros that do not fit are given back, and the batch stays
// written. fmu is held.
func (j *journal) writeFile(batch []byte) error {
	if j.direct {
		return j.writeDirect(batch)
	}
	n, err := j.f.WriteAt(batch, j.off)
	if err != nil {
		return err
	}
	j.off += int64(n)
	return j.zeroAhead(j.off)
}

// zeroAhead writes zeros from `from`, where the file's written bytes end,
// to the next chunk boundary, when from is past the zeros already there.
func (j *journal) zeroAhead(from int64) error {
	if j.chunk == 0 || from <= j.zeroed {
		return nil
	}
	to := (from/j.chunk + 1) * j.chunk
	if _, err := j.f.WriteAt(zeros[:to-from], from); err != nil {
		// A full disk: give back what was zeroed; the next batch
		// appends, and tries again.
		_ = j.f.Truncate(from)
		to = from
	}
	j.zeroed = to
	return nil
}

// onTmpfs reports whether f is on a memory file system, where fdatasync
// costs nothing and zeros ahead would only take memory.
func onTmpfs(f *os.File) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}
