package recordstore_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/gatehouse-dev/gatehouse/gateway/recordstore"
	"github.com/gatehouse-dev/gatehouse/internal/s3test"
)

// ledgerLines returns entries from..to as the ledger writes them; who
// makes the bytes differ from another writer's entries of the same index.
func ledgerLines(who string, from, to int) []byte {
	var b bytes.Buffer
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, `{"index":%d,"time":"2026-01-01T00:00:00Z","type":"checkpoint","prev":"%s-%d"}`+"\n", i, who, i-1)
	}
	return b.Bytes()
}

func rawClient(t *testing.T, s *s3test.Server) *minio.Client {
	t.Helper()
	u, err := url.Parse(s.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	c, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey(), s.SecretKey(), ""),
		Region: "us-east-1", BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func bucketStore(t *testing.T, s *s3test.Server, bucket, prefix string) *recordstore.Store {
	t.Helper()
	st, err := recordstore.Open("s3://"+bucket+"/"+prefix, recordstore.Options{
		Endpoint: s.Endpoint(), AccessKey: s.AccessKey(), SecretKey: s.SecretKey()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func names(t *testing.T, st *recordstore.Store) []string {
	t.Helper()
	objs, err := st.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range objs {
		out = append(out, o.Name)
	}
	return out
}

func mustAppend(t *testing.T, a *recordstore.Anchor, lines []byte) {
	t.Helper()
	if err := a.Append(context.Background(), lines); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, st *recordstore.Store) []byte {
	t.Helper()
	b, err := recordstore.ReadAnchor(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAnchor(t *testing.T) {
	s := s3test.Start(t)
	ctx := context.Background()
	c := rawClient(t, s)

	t.Run("batches", func(t *testing.T) {
		st := storeOf(t, s, "batches")
		if b := mustRead(t, st); len(b) != 0 {
			t.Fatalf("empty prefix: ReadAnchor = %q", b)
		}
		a := recordstore.NewAnchor(st, recordstore.AnchorOptions{})
		if got, want := a.String(), "s3://"+s.Bucket()+"/batches/"; got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
		for _, r := range [][2]int{{1, 3}, {4, 4}, {5, 12}} {
			mustAppend(t, a, ledgerLines("gw", r[0], r[1]))
		}
		// Other objects under the prefix, and below it, are not the anchor's.
		if err := st.Put(ctx, "ledger.jsonl", []byte("not the anchor\n"), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := c.PutObject(ctx, s.Bucket(), "batches/sub/00000000000000000001.jsonl", strings.NewReader("x\n"), 2, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		want := []string{"00000000000000000001.jsonl", "00000000000000000004.jsonl", "00000000000000000005.jsonl", "ledger.jsonl"}
		if got := names(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("objects = %v, want %v", got, want)
		}
		if got := mustRead(t, st); !bytes.Equal(got, ledgerLines("gw", 1, 12)) {
			t.Errorf("ReadAnchor = %q", got)
		}
		o, err := st.Stat(ctx, "00000000000000000004.jsonl")
		if err != nil || o.Meta[recordstore.MetaSHA256] == "" {
			t.Errorf("Stat = %+v, %v: want the SHA-256 metadata", o, err)
		}
	})

	t.Run("junk without a newline is read, not fatal", func(t *testing.T) {
		// Whoever holds the credentials puts an object the gateway never
		// writes: the audit must see it (as a line that is not a ledger
		// entry) and the entries after it, not stop.
		st := storeOf(t, s, "junk")
		a := recordstore.NewAnchor(st, recordstore.AnchorOptions{})
		mustAppend(t, a, ledgerLines("gw", 1, 2))
		if _, err := c.PutObject(ctx, s.Bucket(), "junk/00000000000000000003.jsonl", strings.NewReader("garbage"), 7, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		mustAppend(t, a, ledgerLines("gw", 4, 5))
		want := append(append(ledgerLines("gw", 1, 2), "garbage\n"...), ledgerLines("gw", 4, 5)...)
		if got := mustRead(t, st); !bytes.Equal(got, want) {
			t.Errorf("ReadAnchor = %q, want %q", got, want)
		}
	})

	t.Run("retry after a lost answer", func(t *testing.T) {
		st := storeOf(t, s, "retry")
		a := recordstore.NewAnchor(st, recordstore.AnchorOptions{})
		mustAppend(t, a, ledgerLines("gw", 1, 3))
		mustAppend(t, a, ledgerLines("gw", 1, 5)) // 1-3 stored, answer lost
		mustAppend(t, a, ledgerLines("gw", 1, 2)) // stored already, whole
		mustAppend(t, a, ledgerLines("gw", 4, 5))
		want := []string{"00000000000000000001.jsonl", "00000000000000000004.jsonl"}
		if got := names(t, st); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("objects = %v, want %v", got, want)
		}
		if got := mustRead(t, st); !bytes.Equal(got, ledgerLines("gw", 1, 5)) {
			t.Errorf("ReadAnchor = %q, want entries 1-5 once", got)
		}
		// What made the retry work: the store refuses to replace an object.
		opts := minio.PutObjectOptions{}
		opts.SetMatchETagExcept("*")
		_, err := c.PutObject(ctx, s.Bucket(), "retry/00000000000000000001.jsonl", strings.NewReader("x\n"), 2, opts)
		if code := minio.ToErrorResponse(err).StatusCode; code != 412 {
			t.Errorf("PUT If-None-Match: * over an object: %v (status %d), want 412", err, code)
		}
	})

	t.Run("another writer", func(t *testing.T) {
		st := storeOf(t, s, "shared")
		mustAppend(t, recordstore.NewAnchor(st, recordstore.AnchorOptions{}), ledgerLines("replica-a", 1, 3))
		b := recordstore.NewAnchor(st, recordstore.AnchorOptions{})
		for _, lines := range [][]byte{ledgerLines("replica-b", 1, 2), ledgerLines("replica-b", 1, 5),
			append(ledgerLines("replica-a", 1, 1), ledgerLines("replica-b", 2, 4)...)} {
			err := b.Append(ctx, lines)
			if err == nil || !strings.Contains(err.Error(), "another writer owns this anchor prefix") ||
				!strings.Contains(err.Error(), "00000000000000000001.jsonl") {
				t.Errorf("conflicting batch: %v", err)
			}
		}
		if got := mustRead(t, st); !bytes.Equal(got, ledgerLines("replica-a", 1, 3)) {
			t.Errorf("ReadAnchor = %q, want replica-a's entries, unchanged", got)
		}
	})

	t.Run("not ledger lines", func(t *testing.T) {
		a := recordstore.NewAnchor(storeOf(t, s, "bad"), recordstore.AnchorOptions{})
		for _, lines := range []string{"", `{"index":1}`, "{\"index\":1}\nnot json\n", "{\"type\":\"open\"}\n", "{\"index\":2}\n{\"index\":2}\n"} {
			if err := a.Append(ctx, []byte(lines)); err == nil {
				t.Errorf("Append(%q) = nil, want an error", lines)
			}
		}
		if err := recordstore.NewAnchor(storeOf(t, s, "bad"), recordstore.AnchorOptions{Mode: "forever"}).Append(ctx, ledgerLines("gw", 1, 1)); err == nil || !strings.Contains(err.Error(), "forever") {
			t.Errorf("unknown mode: %v", err)
		}
	})

	t.Run("plain bucket", func(t *testing.T) {
		a := recordstore.NewAnchor(storeOf(t, s, "plain"), recordstore.AnchorOptions{Retention: time.Hour})
		st, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Locked || st.Retention != 0 || !strings.Contains(st.String(), "can be deleted or replaced") {
			t.Errorf("Check = %+v (%s), want not locked", st, st)
		}
		mustAppend(t, a, ledgerLines("gw", 1, 2)) // written anyway, without retention headers
	})

	const lockBucket = "gatehouse-lock"
	if err := c.MakeBucket(ctx, lockBucket, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
		t.Fatal(err)
	}

	t.Run("object lock", func(t *testing.T) {
		st := bucketStore(t, s, lockBucket, "gw1")
		a := recordstore.NewAnchor(st, recordstore.AnchorOptions{Retention: time.Hour})
		status, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !status.Locked || status.Mode != "COMPLIANCE" || status.Retention != time.Hour {
			t.Errorf("Check = %+v, want locked, COMPLIANCE, 1h", status)
		}
		lines := ledgerLines("gw", 1, 3)
		mustAppend(t, a, lines)
		key := "gw1/00000000000000000001.jsonl"
		info, err := c.StatObject(ctx, lockBucket, key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mode, until, err := c.GetObjectRetention(ctx, lockBucket, key, info.VersionID)
		if err != nil {
			t.Fatal(err)
		}
		if mode == nil || *mode != minio.Compliance || until == nil || time.Until(*until) < 59*time.Minute || time.Until(*until) > 61*time.Minute {
			t.Errorf("retention = %v until %v, want COMPLIANCE about an hour ahead", mode, until)
		}
		// The retained version cannot be deleted, even with the bypass
		// header (COMPLIANCE), nor its retention shortened.
		for _, bypass := range []bool{false, true} {
			err := c.RemoveObject(ctx, lockBucket, key, minio.RemoveObjectOptions{VersionID: info.VersionID, GovernanceBypass: bypass})
			if code := minio.ToErrorResponse(err).Code; code != "AccessDenied" {
				t.Errorf("removing the retained version (bypass %v): %v, want AccessDenied", bypass, err)
			}
		}
		soon, compliance := time.Now().Add(time.Minute), minio.Compliance
		if err := c.PutObjectRetention(ctx, lockBucket, key, minio.PutObjectRetentionOptions{VersionID: info.VersionID, Mode: &compliance, RetainUntilDate: &soon}); minio.ToErrorResponse(err).Code != "AccessDenied" {
			t.Errorf("shortening a COMPLIANCE retention: %v, want AccessDenied", err)
		}
		// Hiding it behind a delete marker, or putting a new version over it
		// without If-None-Match, is allowed (as on AWS), but ReadAnchor
		// still returns the retained version.
		if err := c.RemoveObject(ctx, lockBucket, key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatalf("delete marker: %v", err)
		}
		if got := mustRead(t, st); !bytes.Equal(got, lines) {
			t.Errorf("behind a delete marker: ReadAnchor = %q, want %q", got, lines)
		}
		forged := ledgerLines("forger", 1, 3)
		if _, err := c.PutObject(ctx, lockBucket, key, bytes.NewReader(forged), int64(len(forged)), minio.PutObjectOptions{}); err != nil {
			t.Fatalf("new version: %v", err)
		}
		if got := mustRead(t, st); !bytes.Equal(got, append(append([]byte{}, lines...), forged...)) {
			t.Errorf("under a new version: ReadAnchor = %q, want both versions, oldest first", got)
		}
	})

	t.Run("governance", func(t *testing.T) {
		a := recordstore.NewAnchor(bucketStore(t, s, lockBucket, "gw2"), recordstore.AnchorOptions{Retention: time.Hour, Mode: "GOVERNANCE"})
		mustAppend(t, a, ledgerLines("gw", 1, 1))
		key := "gw2/00000000000000000001.jsonl"
		info, err := c.StatObject(ctx, lockBucket, key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if mode, _, err := c.GetObjectRetention(ctx, lockBucket, key, info.VersionID); err != nil || mode == nil || *mode != minio.Governance {
			t.Errorf("retention = %v, %v: want GOVERNANCE", mode, err)
		}
		if err := c.RemoveObject(ctx, lockBucket, key, minio.RemoveObjectOptions{VersionID: info.VersionID}); minio.ToErrorResponse(err).Code != "AccessDenied" {
			t.Errorf("removing a GOVERNANCE-retained version without the bypass: %v, want AccessDenied", err)
		}
		// Whoever holds s3:BypassGovernanceRetention (here: everyone) can.
		if err := c.RemoveObject(ctx, lockBucket, key, minio.RemoveObjectOptions{VersionID: info.VersionID, GovernanceBypass: true}); err != nil {
			t.Errorf("removing with the governance bypass: %v", err)
		}
	})

	t.Run("lock without retention", func(t *testing.T) {
		a := recordstore.NewAnchor(bucketStore(t, s, lockBucket, "gw3"), recordstore.AnchorOptions{})
		status, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !status.Locked || status.Retention != 0 || !strings.Contains(status.String(), "not retained") {
			t.Errorf("Check = %+v (%s), want locked, not retained", status, status)
		}
		mustAppend(t, a, ledgerLines("gw", 1, 1))
	})

	t.Run("bucket default retention", func(t *testing.T) {
		const bucket = "gatehouse-lock-default"
		if err := c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{ObjectLocking: true}); err != nil {
			t.Fatal(err)
		}
		mode, days, unit := minio.Governance, uint(2), minio.Days
		if err := c.SetObjectLockConfig(ctx, bucket, &mode, &days, &unit); err != nil {
			t.Fatal(err)
		}
		a := recordstore.NewAnchor(bucketStore(t, s, bucket, "gw"), recordstore.AnchorOptions{})
		status, err := a.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !status.Locked || status.Mode != "GOVERNANCE" || status.Retention != 48*time.Hour {
			t.Errorf("Check = %+v, want the bucket's default: GOVERNANCE, 48h", status)
		}
		mustAppend(t, a, ledgerLines("gw", 1, 1))
		key := "gw/00000000000000000001.jsonl"
		info, err := c.StatObject(ctx, bucket, key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got, until, err := c.GetObjectRetention(ctx, bucket, key, info.VersionID)
		if err != nil || got == nil || *got != minio.Governance || until == nil || time.Until(*until) < 47*time.Hour {
			t.Errorf("retention = %v until %v, %v: want the bucket default, GOVERNANCE for 2 days", got, until, err)
		}
	})
}
