package gateway

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
)

func TestRecorderBucketBlock(t *testing.T) {
	block := func(body string) string {
		return goodConfig + "\nrecorder {\n  bucket {\n" + body + "  }\n}\n"
	}
	cfg, _, diags := ParseConfig([]byte(block(`    url = "s3://audit/gw"
    endpoint = "https://s3.internal:9000"
    region = "eu-west-1"
    access_key = "env:S3_KEY"
    secret_key = "file:/etc/gatehouse/s3-secret"
`)), "gateway.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	b := cfg.Recorder.Bucket
	if b == nil || b.URL != "s3://audit/gw" || b.Endpoint != "https://s3.internal:9000" || b.Region != "eu-west-1" ||
		b.AccessKey != "env:S3_KEY" || b.SecretKey != "file:/etc/gatehouse/s3-secret" || b.MaxBehind != DefaultMaxBehind {
		t.Fatalf("bucket %+v", b)
	}
	if cfg, _, _ := ParseConfig([]byte(goodConfig), "gateway.hcl"); cfg.Recorder.Bucket != nil {
		t.Fatal("a bucket without a bucket block")
	}
	tests := map[string]struct{ body, want string }{
		"loopback http":      {`    url = "s3://a"` + "\n" + `    endpoint = "http://127.0.0.1:8333"` + "\n", ""},
		"anonymous":          {`    url = "s3://a/p"` + "\n" + `    max_behind = "0s"` + "\n", ""},
		"no url":             {`    region = "x"` + "\n", "Missing required argument"},
		"not s3":             {`    url = "https://a/p"` + "\n", "Invalid bucket URL"},
		"plain http outside": {`    url = "s3://a"` + "\n" + `    endpoint = "http://s3.example.com"` + "\n", "Invalid endpoint"},
		"a secret in clear":  {`    url = "s3://a"` + "\n" + `    access_key = "AKIAXXXX"` + "\n" + `    secret_key = "env:S"` + "\n", "Not a secret reference"},
		"half credentials":   {`    url = "s3://a"` + "\n" + `    access_key = "env:K"` + "\n", "Incomplete credentials"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, diags := ParseConfig([]byte(block(tc.body)), "gateway.hcl")
			if tc.want == "" {
				if diags.HasErrors() {
					t.Fatal(diags)
				}
				return
			}
			for _, d := range diags {
				if d.Summary == tc.want {
					if strings.Contains(d.Detail, "AKIAXXXX") {
						t.Errorf("the diagnostic repeats a secret: %s", d.Detail)
					}
					return
				}
			}
			t.Fatalf("want %q, got %v", tc.want, diags)
		})
	}
}

// TestReadyzWhenUploadsAreBehind: uploadsBehind, which /readyz reports,
// says so once a recording has waited past max_behind, with the last error.
func TestReadyzWhenUploadsAreBehind(t *testing.T) {
	dir := t.TempDir()
	st, err := recordstore.Open("s3://b/p", recordstore.Options{Endpoint: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	up, err := recordstore.NewUploader(st, dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := &Gateway{cfg: &Config{Recorder: RecorderConfig{Bucket: &BucketConfig{MaxBehind: 500 * time.Millisecond}}}, uploader: up}
	if msg := g.uploadsBehind(); msg != "" {
		t.Fatalf("nothing pending: %q", msg)
	}
	if err := os.WriteFile(filepath.Join(dir, "s1.jsonl"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up.Sealed("s1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := up.Pass(ctx); err == nil {
		t.Fatal("an upload to a closed port succeeded")
	}
	if msg := g.uploadsBehind(); msg != "" {
		t.Fatalf("behind before max_behind: %q", msg)
	}
	time.Sleep(600 * time.Millisecond)
	msg := g.uploadsBehind()
	if !strings.Contains(msg, "1 recording(s) waiting") || !strings.Contains(msg, "last error") {
		t.Fatalf("uploadsBehind = %q", msg)
	}
	g.cfg.Recorder.Bucket.MaxBehind = 0
	if msg := g.uploadsBehind(); msg != "" {
		t.Fatalf("max_behind 0: %q", msg)
	}
}
