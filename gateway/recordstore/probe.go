package recordstore

import (
	"context"
	"fmt"

	"github.com/minio/minio-go/v7"
)

// Probe checks, without writing, that the store answers, that the
// credentials are accepted, and that the bucket exists and can be listed
// under the prefix (gatehouse gateway --check).
func (s *Store) Probe(ctx context.Context) error {
	ok, err := s.c.BucketExists(ctx, s.loc.Bucket)
	if err != nil {
		return fmt.Errorf("%s: %w", s.loc, err)
	}
	if !ok {
		return fmt.Errorf("%s: the bucket does not exist", s.loc)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for info := range s.c.ListObjects(ctx, s.loc.Bucket, minio.ListObjectsOptions{Prefix: s.loc.Prefix, MaxKeys: 1}) {
		if info.Err != nil {
			return fmt.Errorf("list %s: %w", s.loc, info.Err)
		}
		break
	}
	return nil
}
