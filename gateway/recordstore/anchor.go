package recordstore

// The ledger's anchor in a bucket. The recorder's exporter sends batches of
// ledger entries (see recorder.Anchor); each batch becomes a new object
// named by the index of its first entry,
//
//	s3://BUCKET/PREFIX/00000000000000000001.jsonl   entries 1 to n
//	s3://BUCKET/PREFIX/0000000000000000000n+1.jsonl ...
//
// zero-padded so that names sort in ledger order. Objects are written once
// and never replaced: every PUT carries If-None-Match: *, and on a bucket
// with S3 Object Lock each object is retained (COMPLIANCE by default), so
// that whoever takes the gateway's host, credentials included, can neither
// delete nor rewrite what was anchored, and `audit verify --anchor` finds a
// rewritten ledger out. Without Object Lock the conditional PUT still
// refuses overwrites through the API, but whoever holds the credentials can
// delete an object and write it again: Check says so, for the gateway to
// warn.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/gatehouse-dev/gatehouse/gateway/recorder"
)

// AnchorOptions say how anchored objects are retained.
type AnchorOptions struct {
	// Retention is how long each object is locked from its write; 0: the
	// bucket's default retention, if it has one. It applies only on a
	// bucket with Object Lock enabled.
	Retention time.Duration
	// Mode is the retention mode, "COMPLIANCE" (the default: nobody, not
	// even the account's root, can shorten it) or "GOVERNANCE" (holders of
	// s3:BypassGovernanceRetention can).
	Mode string
}

// Anchor stores ledger entries in a bucket; it implements recorder.Anchor.
type Anchor struct {
	st *Store
	o  AnchorOptions

	mu     sync.Mutex
	status *AnchorStatus // the bucket's lock configuration, read once
}

var _ recorder.Anchor = (*Anchor)(nil)

// NewAnchor anchors the ledger under st's prefix, which must be this
// gateway's alone. It does not contact the store.
func NewAnchor(st *Store, o AnchorOptions) *Anchor { return &Anchor{st: st, o: o} }

// String is the prefix's URL (the exporter remembers what it sent by it).
func (a *Anchor) String() string { return a.st.loc.String() }

// AnchorStatus is what protects the anchored objects.
type AnchorStatus struct {
	// Locked: the bucket has S3 Object Lock enabled.
	Locked bool
	// Mode and Retention are what each new object gets, from the options
	// or else the bucket's default retention; Retention 0: objects are not
	// retained.
	Mode      string
	Retention time.Duration
}

func (s AnchorStatus) String() string {
	switch {
	case !s.Locked:
		return "object lock is not enabled on the bucket: anchored objects are never overwritten by the gateway, but can be deleted or replaced by whoever holds the credentials"
	case s.Retention <= 0:
		return "object lock is enabled, but the bucket has no default retention and none is configured: anchored objects are not retained"
	}
	return fmt.Sprintf("object lock: each anchored object is retained for %s in %s mode", s.Retention, s.Mode)
}

// Check reads the bucket's object lock configuration (once; Append uses
// the same) and says what protects the anchored objects.
func (a *Anchor) Check(ctx context.Context) (AnchorStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.status != nil {
		return *a.status, nil
	}
	mode := strings.ToUpper(a.o.Mode)
	if mode == "" {
		mode = string(minio.Compliance)
	}
	if !minio.RetentionMode(mode).IsValid() {
		return AnchorStatus{}, fmt.Errorf("anchor %s: retention mode %q: want COMPLIANCE or GOVERNANCE", a, a.o.Mode)
	}
	if a.o.Retention < 0 {
		return AnchorStatus{}, fmt.Errorf("anchor %s: negative retention %s", a, a.o.Retention)
	}
	enabled, bMode, validity, unit, err := a.st.c.GetObjectLockConfig(ctx, a.st.loc.Bucket)
	var st AnchorStatus
	switch {
	case err != nil && minio.ToErrorResponse(err).Code == "ObjectLockConfigurationNotFoundError":
		// A bucket created without Object Lock: st stays unlocked.
	case err != nil:
		return AnchorStatus{}, fmt.Errorf("anchor %s: read the bucket's object lock configuration (the credentials need s3:GetBucketObjectLockConfiguration): %w", a, err)
	case enabled == "Enabled":
		st.Locked = true
		if a.o.Retention > 0 {
			st.Mode, st.Retention = mode, a.o.Retention
		} else if bMode != nil && validity != nil && unit != nil && *validity > 0 {
			day := 24 * time.Hour
			if *unit == minio.Years {
				day *= 365 // S3 counts a year as 365 days
			}
			st.Mode, st.Retention = string(*bMode), time.Duration(*validity)*day
		}
	}
	a.status = &st
	return st, nil
}

// ledgerIndexes returns the index of each line of a batch, refusing a
// batch that is not whole ledger lines with increasing indexes.
func ledgerIndexes(lines []byte) ([]uint64, error) {
	if len(lines) == 0 || lines[len(lines)-1] != '\n' {
		return nil, fmt.Errorf("the batch is not whole ledger lines (it does not end in a newline)")
	}
	var idx []uint64
	for n, line := range bytes.SplitAfter(lines[:len(lines)-1], []byte("\n")) {
		var e struct {
			Index uint64 `json:"index"`
		}
		if err := json.Unmarshal(line, &e); err != nil || e.Index == 0 {
			return nil, fmt.Errorf("line %d of the batch is not a ledger entry with an index", n+1)
		}
		if n > 0 && e.Index <= idx[n-1] {
			return nil, fmt.Errorf("line %d of the batch has index %d, after %d", n+1, e.Index, idx[n-1])
		}
		idx = append(idx, e.Index)
	}
	return idx, nil
}

// anchorName is the object holding the entries from index first on.
func anchorName(first uint64) string { return fmt.Sprintf("%020d.jsonl", first) }

func isAnchorName(name string) bool {
	digits, ok := strings.CutSuffix(name, ".jsonl")
	return ok && len(digits) == 20 && strings.Trim(digits, "0123456789") == ""
}

// Append stores the lines as a new object named by their first index, and
// returns nil once the store holds them. An object of that name already
// there is an earlier attempt whose answer was lost when it holds the
// batch's first lines (the rest go into the next object), and another
// writer's when it holds anything else.
func (a *Anchor) Append(ctx context.Context, lines []byte) error {
	idx, err := ledgerIndexes(lines)
	if err != nil {
		return fmt.Errorf("anchor %s: %w", a, err)
	}
	st, err := a.Check(ctx)
	if err != nil {
		return err
	}
	for rest, i := lines, 0; len(rest) > 0; {
		name := anchorName(idx[i])
		err := a.put(ctx, name, rest, st)
		if err == nil {
			return nil
		}
		if minio.ToErrorResponse(err).StatusCode != http.StatusPreconditionFailed {
			// A 409 ConditionalRequestConflict (AWS, a concurrent write of
			// the same name) lands here too: the exporter retries.
			return fmt.Errorf("put %s%s: %w", a, name, err)
		}
		held, err := a.st.Get(ctx, name)
		if err != nil {
			return fmt.Errorf("anchor: %s%s exists, and cannot be read back: %w", a, name, err)
		}
		if bytes.HasPrefix(held, rest) {
			return nil // an earlier attempt stored all of this, and maybe more
		}
		if len(held) == 0 || held[len(held)-1] != '\n' || !bytes.HasPrefix(rest, held) {
			return fmt.Errorf("anchor: %s%s already holds other entries than this gateway's ledger: "+
				"another writer owns this anchor prefix (two gateways or replicas given the same one?); each gateway needs a prefix of its own", a, name)
		}
		// held ends in a newline inside rest: it is whole lines of it.
		i += bytes.Count(held, []byte("\n"))
		rest = rest[len(held):]
	}
	return nil
}

// put writes data as name unless the name exists, retained as st says,
// and confirms it as Store.Put does.
func (a *Anchor) put(ctx context.Context, name string, data []byte, st AnchorStatus) error {
	sum := sha256.Sum256(data)
	meta := map[string]string{MetaSHA256: hex.EncodeToString(sum[:])}
	opts := minio.PutObjectOptions{ContentType: "application/x-ndjson", UserMetadata: meta, SendContentMd5: true}
	opts.SetMatchETagExcept("*")
	if st.Locked && a.o.Retention > 0 {
		// With Retention 0 the bucket's default retention (if any) applies
		// on its own. AWS refuses these headers on a bucket without Object
		// Lock, hence only when Locked.
		opts.Mode = minio.RetentionMode(st.Mode)
		opts.RetainUntilDate = time.Now().Add(st.Retention).UTC()
	}
	if _, err := a.st.c.PutObject(ctx, a.st.loc.Bucket, a.st.loc.Prefix+name, bytes.NewReader(data), int64(len(data)), opts); err != nil {
		return err
	}
	o, err := a.st.Stat(ctx, name)
	if err != nil {
		return fmt.Errorf("confirm: %w", err)
	}
	if o.Size != int64(len(data)) || o.Meta[MetaSHA256] != meta[MetaSHA256] {
		return fmt.Errorf("confirm: the store holds %d bytes (sha256 %q), not the %d written", o.Size, o.Meta[MetaSHA256], len(data))
	}
	return nil
}

// ReadAnchor returns the anchor's copy of the ledger under st's prefix:
// the objects named as Anchor names them (other names are skipped), in
// name order, concatenated. An empty prefix is an empty copy.
//
// On a versioned bucket (Object Lock implies versioning) it returns every
// version of every object, oldest first, not only the current one: whoever
// holds the credentials can hide a locked object behind a delete marker,
// or put a new version over it, but not remove the retained version, and
// audit verify checks every entry it is given against the ledger by index.
func ReadAnchor(ctx context.Context, st *Store) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var objs []minio.ObjectInfo
	var total int64
	list := func(versions bool) error {
		objs, total = nil, 0
		for info := range st.c.ListObjects(ctx, st.loc.Bucket, minio.ListObjectsOptions{Prefix: st.loc.Prefix, WithVersions: versions}) {
			if info.Err != nil {
				return info.Err
			}
			if info.IsDeleteMarker || !isAnchorName(strings.TrimPrefix(info.Key, st.loc.Prefix)) {
				continue
			}
			if total += info.Size; total > recorder.MaxAnchorBytes {
				return fmt.Errorf("the anchor holds more than %d bytes", recorder.MaxAnchorBytes)
			}
			objs = append(objs, info)
		}
		return nil
	}
	err := list(true)
	if err != nil && minio.ToErrorResponse(err).Code == "NotImplemented" {
		err = list(false) // a store without versioning (R2, ...)
	}
	if err != nil && minio.ToErrorResponse(err).Code == "AccessDenied" {
		return nil, fmt.Errorf("list the anchor %s with its versions (the credentials need s3:ListBucketVersions and s3:GetObjectVersion): %w", st.loc, err)
	}
	if err != nil {
		return nil, fmt.Errorf("list the anchor %s: %w", st.loc, err)
	}
	// Order by name, then oldest first (within a name the order does not
	// matter to audit verify, but this one reads best). S3 lists a name's
	// versions newest first, which breaks ties of LastModified (seconds).
	pos := make(map[string]int, len(objs))
	for i, o := range objs {
		pos[o.Key+"\x00"+o.VersionID] = i
	}
	sort.SliceStable(objs, func(i, j int) bool {
		a, b := objs[i], objs[j]
		switch {
		case a.Key != b.Key:
			return a.Key < b.Key
		case !a.LastModified.Equal(b.LastModified):
			return a.LastModified.Before(b.LastModified)
		}
		return pos[a.Key+"\x00"+a.VersionID] > pos[b.Key+"\x00"+b.VersionID]
	})
	out := make([]byte, 0, total)
	for _, info := range objs {
		name := strings.TrimPrefix(info.Key, st.loc.Prefix)
		var opts minio.GetObjectOptions
		if info.VersionID != "" && info.VersionID != "null" {
			// Read the version listed, the current one too: read by
			// name, a version put between the listing and the read would
			// stand in for the retained one. (An unversioned bucket's
			// objects, "null", are read by name: some stores do not take
			// versionId=null.)
			opts.VersionID = info.VersionID
		}
		data, err := getAll(ctx, st, info.Key, opts)
		if err != nil {
			return nil, fmt.Errorf("read the anchor's %s%s (version %q): %w", st.loc, name, info.VersionID, err)
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			// Not whole ledger lines: the gateway never writes such an
			// object. Its last line is ended here so that audit verify
			// reports it (not a ledger entry, or an entry that differs)
			// and goes on with the other objects, rather than stop.
			data = append(data, '\n')
		}
		if int64(len(out)+len(data)) > recorder.MaxAnchorBytes {
			return nil, fmt.Errorf("the anchor %s holds more than %d bytes", st.loc, recorder.MaxAnchorBytes)
		}
		out = append(out, data...)
	}
	return out, nil
}

func getAll(ctx context.Context, st *Store, key string, opts minio.GetObjectOptions) ([]byte, error) {
	obj, err := st.c.GetObject(ctx, st.loc.Bucket, key, opts)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return io.ReadAll(io.LimitReader(obj, recorder.MaxAnchorBytes+1))
}
