package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// What both releases do alike, kept apart from v3.go and v4.go so that those name only what
// differs between them: their own types, and how their S3 driver is called.

// decodeStrictly decodes data into a T, refusing any field T lacks, and re-encodes it as JSON, so
// that sameFields can tell whether Argo kept every field it was given.
func decodeStrictly[T any](data []byte) ([]byte, error) {
	var value T
	if err := yaml.UnmarshalStrict(data, &value); err != nil {
		return nil, err
	}
	return json.Marshal(value)
}

// s3Secrets is what an S3 repository's Secrets hold for the S3 driver.
type s3Secrets struct {
	accessKey, secretKey, sessionToken, trustedCA string
}

// readS3Secrets reads the keys, session token and CA from the Secrets an S3 repository names, in
// the order and on the conditions of the executor's newDriver, so that the check reads no Secret
// Argo would not: the secret key (whose Secret must then be named too) and the session token only
// along with an access key, the CA whenever it is named. What is not read stays empty.
func readS3Secrets(ctx context.Context, secrets secretReader, accessKey, secretKey, sessionToken, ca *corev1.SecretKeySelector) (s3Secrets, error) {
	var read s3Secrets
	var err error
	if accessKey != nil && accessKey.Name != "" {
		if read.accessKey, err = secrets(ctx, accessKey.Name, accessKey.Key); err != nil {
			return s3Secrets{}, err
		}
		if read.secretKey, err = secrets(ctx, secretKey.Name, secretKey.Key); err != nil {
			return s3Secrets{}, err
		}
		if sessionToken != nil && sessionToken.Name != "" {
			if read.sessionToken, err = secrets(ctx, sessionToken.Name, sessionToken.Key); err != nil {
				return s3Secrets{}, err
			}
		}
	}
	if ca != nil && ca.Name != "" {
		if read.trustedCA, err = secrets(ctx, ca.Name, ca.Key); err != nil {
			return s3Secrets{}, err
		}
	}
	return read, nil
}

// artifactKey expands the placeholders of a repository's keyFormat the way the controller would
// for one workflow and pod.
func artifactKey(keyFormat, workflow string) string {
	key := strings.ReplaceAll(keyFormat, "{{workflow.name}}", workflow)
	key = strings.ReplaceAll(key, "{{pod.name}}", workflow+"-step")
	return key + "/artifact.txt"
}

// roundTrip saves a new file with save and loads it back with load, as one step's output becomes
// the next step's input; it fails unless what comes back is what was saved. The content carries the
// release and the time, so that an object left over from another release or an earlier run cannot
// pass for this one.
func roundTrip(dir, release string, save, load func(path string) error) error {
	content := []byte(fmt.Sprintf("saved by argo %s's S3 driver at %s", release, time.Now().Format(time.RFC3339Nano)))
	path := filepath.Join(dir, release+"-out.txt")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		return err
	}
	if err := save(path); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	back := filepath.Join(dir, release+"-in.txt")
	if err := load(back); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	got, err := os.ReadFile(back)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, content) {
		return fmt.Errorf("loaded %q, saved %q", got, content)
	}
	return nil
}

// s3URL names an object for the report of what was saved and loaded.
func s3URL(bucket, key string) string {
	return fmt.Sprintf("s3://%s/%s", bucket, key)
}
