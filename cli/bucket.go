package cli

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
)

// bucketTimeout bounds downloading recordings from a bucket.
const bucketTimeout = 10 * time.Minute

// bucketFlags are how the recording commands reach a bucket given as
// s3://BUCKET/PREFIX: the endpoint and region by flag or environment, the
// credentials from the environment only (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, as the AWS tools read them), so that they never
// appear in a command line.
type bucketFlags struct {
	endpoint string
	region   string
}

func addBucketFlags(cmd *cobra.Command, b *bucketFlags) {
	cmd.Flags().StringVar(&b.endpoint, "endpoint", os.Getenv("GATEHOUSE_S3_ENDPOINT"),
		"for an s3:// bucket URL: the S3 API's base URL, https://HOST[:PORT] (default $GATEHOUSE_S3_ENDPOINT, or AWS S3); credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY")
	cmd.Flags().StringVar(&b.region, "region", cmp.Or(os.Getenv("GATEHOUSE_S3_REGION"), os.Getenv("AWS_REGION")),
		"for an s3:// bucket URL: the bucket's region (default $GATEHOUSE_S3_REGION, $AWS_REGION or us-east-1)")
}

func (b bucketFlags) open(url string) (*recordstore.Store, error) {
	return recordstore.Open(url, recordstore.Options{Endpoint: b.endpoint, Region: b.region,
		AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY")})
}

// download copies recordings from the bucket into a new temporary
// directory, with the bucket's ledger: the ones named (session ids), or
// every one. cleanup removes the directory.
func (b bucketFlags) download(ctx context.Context, url string, sessions ...string) (dir string, cleanup func(), err error) {
	st, err := b.open(url)
	if err != nil {
		return "", nil, err
	}
	dir, err = os.MkdirTemp("", "gatehouse-bucket-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	ctx, cancel := context.WithTimeout(ctx, bucketTimeout)
	defer cancel()
	var names []string
	if len(sessions) > 0 {
		for _, s := range sessions {
			names = append(names, strings.TrimSuffix(s, ".jsonl")+".jsonl")
		}
		names = append(names, recordstore.LedgerObject)
	}
	if _, err := st.Download(ctx, dir, names...); err != nil {
		cleanup()
		return "", nil, err
	}
	return dir, cleanup, nil
}

// splitSessionURL reads s3://BUCKET/PREFIX/SESSION[.jsonl] as the bucket
// URL and the session.
func splitSessionURL(u string) (bucketURL, session string, err error) {
	i := strings.LastIndex(u, "/")
	if i < len("s3://") || i == len(u)-1 {
		return "", "", fmt.Errorf("%q: want s3://BUCKET/PREFIX/SESSION", u)
	}
	bucketURL, session = u[:i], strings.TrimSuffix(u[i+1:], ".jsonl")
	if _, err := recordstore.ParseURL(bucketURL); err != nil {
		return "", "", fmt.Errorf("%q: want s3://BUCKET/PREFIX/SESSION", u)
	}
	return bucketURL, session, nil
}

// relocate makes the report name the bucket's objects, not the temporary
// copies, and judges recordings the bucket's ledger names but the bucket
// lacks: a session whose last entry in that ledger is not its seal was
// open when the ledger was uploaded, and its recording is uploaded once it
// ends (or, after a crash, once the next start seals it). It is reported
// UNSEALED, with a note. One whose seal the ledger holds stays MISSING: it
// was uploaded and has been deleted.
func relocate(rep *recorder.AuditReport, dir, bucketURL string) {
	loc, _ := recordstore.ParseURL(bucketURL)
	open := openInLedger(filepath.Join(dir, recorder.LedgerName))
	name := func(p string) string {
		if rel, err := filepath.Rel(dir, p); err == nil && !strings.HasPrefix(rel, "..") {
			return loc.String() + rel
		}
		return p
	}
	for _, r := range rep.Recordings {
		r.Path = name(r.Path)
		if r.Status == recorder.StatusMissing && open[r.Session] && len(r.Problems) == 1 {
			r.Status = recorder.StatusUnsealed
			r.Problems = nil
			r.Notes = append(r.Notes, "not in the bucket yet: the bucket's ledger has its start and no seal, so its session was open when the ledger was uploaded (its recording is uploaded when it ends)")
		}
	}
	if rep.Ledger != nil {
		rep.Ledger.Path = name(rep.Ledger.Path)
	}
}

// openInLedger returns the sessions a ledger names without a seal or a
// crash seal. Entries are only parsed for their type and session here:
// the audit checks their chain and signatures.
func openInLedger(path string) map[string]bool {
	open := map[string]bool{}
	data, err := os.ReadFile(path)
	if err != nil {
		return open
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), recorder.MaxLineBytes)
	for sc.Scan() {
		var e recorder.LedgerEntry
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		switch e.Type {
		case recorder.LedgerStart, recorder.LedgerAdopt:
			open[e.Session] = !e.Sealed
		case recorder.LedgerSeal, recorder.LedgerCrashSeal:
			delete(open, e.Session)
		}
	}
	return open
}
