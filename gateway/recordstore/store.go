// Package recordstore keeps copies of session recordings, and of their
// ledger, in S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph,
// R2, ...), with minio-go as the client.
//
// The recorder's durability path is untouched: a recording is written and
// synced locally as before, and only once its session has ended (sealed) is
// it uploaded, by the Uploader, which retries with exponential backoff,
// never deletes the local file, and at start uploads what a previous run
// left behind. The bucket's layout is the recordings directory's:
//
//	s3://BUCKET/PREFIX/SESSION.jsonl   one recording, byte for byte
//	s3://BUCKET/PREFIX/ledger.jsonl    the ledger's durable entries
//
// so a bucket, downloaded, is a recordings directory that `gatehouse audit
// verify` audits as it would the local one. Every recording object carries
// metadata (MetaStatus) with what Verify said of it when it was uploaded:
// "unsealed" for a crash leftover that could not be sealed, "crashed" for
// one sealed at the next start.
package recordstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Object metadata every recording carries (x-amz-meta-gatehouse-*).
const (
	// MetaStatus is what Verify judged the recording when it was
	// uploaded: ok, crashed, unsealed, incomplete or altered.
	MetaStatus = "Gatehouse-Status"
	// MetaSHA256 is the hex SHA-256 of the recording's bytes.
	MetaSHA256 = "Gatehouse-Sha256"
)

// LedgerObject is the ledger's name in the bucket, as in a recordings
// directory.
const LedgerObject = "ledger.jsonl"

// IsURL reports whether s names a bucket (s3://...).
func IsURL(s string) bool { return strings.HasPrefix(s, "s3://") }

// Location is a bucket and a key prefix (empty, or ending in "/").
type Location struct {
	Bucket string
	Prefix string
}

// ParseURL reads s3://BUCKET[/PREFIX].
func ParseURL(s string) (Location, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return Location{}, fmt.Errorf("%q is not a bucket URL: want s3://BUCKET/PREFIX", s)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" || strings.ContainsAny(bucket, "?#") || strings.ContainsAny(prefix, "?#") {
		return Location{}, fmt.Errorf("%q is not a bucket URL: want s3://BUCKET/PREFIX", s)
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return Location{Bucket: bucket, Prefix: prefix}, nil
}

func (l Location) String() string { return "s3://" + l.Bucket + "/" + l.Prefix }

// Options say how to reach the store.
type Options struct {
	// Endpoint is the S3 API's base URL, https://HOST[:PORT] (plain http
	// only on a loopback address); empty: AWS S3.
	Endpoint string
	// Region is the bucket's region (default us-east-1).
	Region string
	// AccessKey and SecretKey sign requests; both empty: anonymous.
	AccessKey string
	SecretKey string
}

// Store is a bucket location and a client for it.
type Store struct {
	c   *minio.Client
	loc Location
}

// Open makes a client for the bucket URL. It does not contact the store.
func Open(bucketURL string, o Options) (*Store, error) {
	loc, err := ParseURL(bucketURL)
	if err != nil {
		return nil, err
	}
	host, secure, err := CheckEndpoint(o.Endpoint)
	if err != nil {
		return nil, err
	}
	region := o.Region
	if region == "" {
		region = "us-east-1"
	}
	opts := &minio.Options{Secure: secure, Region: region, BucketLookup: minio.BucketLookupPath}
	if o.Endpoint == "" {
		opts.BucketLookup = minio.BucketLookupAuto
	}
	if o.AccessKey != "" || o.SecretKey != "" {
		opts.Creds = credentials.NewStaticV4(o.AccessKey, o.SecretKey, "")
	}
	c, err := minio.New(host, opts)
	if err != nil {
		return nil, fmt.Errorf("recordstore: %w", err)
	}
	return &Store{c: c, loc: loc}, nil
}

// CheckEndpoint reads an endpoint URL: its host[:port], and whether it is
// TLS. An http:// endpoint is refused unless its host is a loopback address
// (credentials and recordings would cross the network in the clear).
func CheckEndpoint(endpoint string) (host string, secure bool, err error) {
	if endpoint == "" {
		return "s3.amazonaws.com", true, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", false, fmt.Errorf("endpoint %q: want https://HOST[:PORT]", endpoint)
	}
	switch u.Scheme {
	case "https":
		return u.Host, true, nil
	case "http":
		if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
			return u.Host, false, nil
		}
		return "", false, fmt.Errorf("endpoint %q: plain http is only accepted on a loopback address; use https", endpoint)
	}
	return "", false, fmt.Errorf("endpoint %q: want https://HOST[:PORT]", endpoint)
}

// Location is where the store keeps recordings.
func (s *Store) Location() Location { return s.loc }

// Object is one object under the store's prefix.
type Object struct {
	Name string // relative to the prefix
	Size int64
	// Meta is the user metadata (MetaStatus, MetaSHA256); filled by Stat,
	// not by List.
	Meta map[string]string
}

// Put uploads data as name, with metadata, and confirms it: the object the
// store then returns has the size (and, when given, the SHA-256 metadata)
// written.
func (s *Store) Put(ctx context.Context, name string, data []byte, meta map[string]string) error {
	key := s.loc.Prefix + name
	_, err := s.c.PutObject(ctx, s.loc.Bucket, key, bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/x-ndjson", UserMetadata: meta, SendContentMd5: true})
	if err != nil {
		return fmt.Errorf("put %s%s: %w", s.loc, name, err)
	}
	o, err := s.Stat(ctx, name)
	if err != nil {
		return fmt.Errorf("confirm %s%s: %w", s.loc, name, err)
	}
	if o.Size != int64(len(data)) || (meta[MetaSHA256] != "" && o.Meta[MetaSHA256] != meta[MetaSHA256]) {
		return fmt.Errorf("confirm %s%s: the store holds %d bytes (sha256 %q), not the %d written", s.loc, name, o.Size, o.Meta[MetaSHA256], len(data))
	}
	return nil
}

// Stat returns an object's size and metadata.
func (s *Store) Stat(ctx context.Context, name string) (Object, error) {
	info, err := s.c.StatObject(ctx, s.loc.Bucket, s.loc.Prefix+name, minio.StatObjectOptions{})
	if err != nil {
		return Object{}, err
	}
	meta := map[string]string{}
	for k, v := range info.UserMetadata {
		meta[canonicalMeta(k)] = v
	}
	return Object{Name: name, Size: info.Size, Meta: meta}, nil
}

// canonicalMeta turns a metadata key as a store returns it
// (gatehouse-status, Gatehouse-Status, X-Amz-Meta-Gatehouse-Status) into
// the form of the Meta constants.
func canonicalMeta(k string) string {
	k = strings.ToLower(k)
	k = strings.TrimPrefix(k, "x-amz-meta-")
	parts := strings.Split(k, "-")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "-")
}

// List returns the objects directly under the prefix (not in
// sub-prefixes), with their sizes.
func (s *Store) List(ctx context.Context) ([]Object, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []Object
	for info := range s.c.ListObjects(ctx, s.loc.Bucket, minio.ListObjectsOptions{Prefix: s.loc.Prefix}) {
		if info.Err != nil {
			return nil, fmt.Errorf("list %s: %w", s.loc, info.Err)
		}
		name := strings.TrimPrefix(info.Key, s.loc.Prefix)
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		out = append(out, Object{Name: name, Size: info.Size})
	}
	return out, nil
}

// Get reads an object whole.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	obj, err := s.c.GetObject(ctx, s.loc.Bucket, s.loc.Prefix+name, minio.GetObjectOptions{})
	if err != nil {
		return nil, fmt.Errorf("get %s%s: %w", s.loc, name, err)
	}
	defer obj.Close()
	data, err := io.ReadAll(obj)
	if err != nil {
		return nil, fmt.Errorf("get %s%s: %w", s.loc, name, err)
	}
	return data, nil
}

// ErrNotFound is returned by Download for a name the bucket does not hold.
var ErrNotFound = errors.New("not in the bucket")

// Download copies objects into dir under their names: the ones named, or,
// with no name, every object under the prefix whose name is a recording
// or the ledger (*.jsonl). It returns the names written. A named object the
// bucket does not hold is an error wrapping ErrNotFound, except the ledger,
// which is skipped (audit verify says a ledger is missing).
func (s *Store) Download(ctx context.Context, dir string, names ...string) ([]string, error) {
	if len(names) == 0 {
		objs, err := s.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			if strings.HasSuffix(o.Name, ".jsonl") {
				names = append(names, o.Name)
			}
		}
	}
	var got []string
	for _, n := range names {
		if n != path.Base(n) || n == "." || n == ".." {
			return got, fmt.Errorf("%q is not an object name in %s", n, s.loc)
		}
		data, err := s.Get(ctx, n)
		if err != nil {
			if minio.ToErrorResponse(errors.Unwrap(err)).Code == "NoSuchKey" {
				if n == LedgerObject {
					continue
				}
				return got, fmt.Errorf("%s%s: %w", s.loc, n, ErrNotFound)
			}
			return got, err
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o600); err != nil {
			return got, err
		}
		got = append(got, n)
	}
	return got, nil
}
