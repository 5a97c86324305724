package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFormat1RecordingsReplayAndVerify: recordings written by the release
// before the protocol seam replay exactly as that release replayed them
// (its output is committed beside them as .replay.golden; only the header
// now names the protocol), and audit verify accepts them.
func TestFormat1RecordingsReplayAndVerify(t *testing.T) {
	dir := filepath.Join("..", "gateway", "recorder", "testdata", "format1")
	key := filepath.Join(dir, "recorder.pub")
	paths, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if len(paths) == 0 {
		t.Fatal("no format 1 fixtures")
	}
	for _, p := range paths {
		r := gatehouse(t, "replay", p, "--key", key)
		if r.code != 0 {
			t.Fatalf("replay %s: exit %d\n%s%s", p, r.code, r.stdout, r.stderr)
		}
		golden, err := os.ReadFile(strings.TrimSuffix(p, ".jsonl") + ".replay.golden")
		if err != nil {
			t.Fatal(err)
		}
		// The golden was made from the repository root, with the path
		// relative to it.
		want := strings.ReplaceAll(string(golden), "gateway/recorder/testdata/format1/", dir+"/")
		got := strings.Replace(r.stdout, " (postgres)\n", "\n", 1)
		if got != want {
			t.Errorf("replay of %s differs from the previous release's:\n--- got\n%s\n--- want\n%s", filepath.Base(p), got, want)
		}
	}
	r := gatehouse(t, "audit", "verify", dir, "--key", key, "--strict")
	if r.code != 0 || !strings.Contains(r.stdout, "3 recording(s) checked, 0 with problems") {
		t.Errorf("audit verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
