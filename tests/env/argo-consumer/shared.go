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
// differs between them: their own types, and how their S3 driver is set up and called.

// decodeStrictly decodes data into a T, refusing any field T lacks, and re-encodes it as JSON, so
// that sameFields can tell whether Argo kept every field it was given.
func decodeStrictly[T any](data []byte) ([]byte, error) {
	var value T
	if err := yaml.UnmarshalStrict(data, &value); err != nil {
		return nil, err
	}
	return json.Marshal(value)
}

// s3Resolved is what the use check reads of the ArtifactRepositoryRefStatus a release resolved
// as the namespace default. It is read through the JSON both releases' types encode, whose names
// the CRD fixes: their Go types are alike but for the module, so this is written once.
type s3Resolved struct {
	// Key is the key of ConfigMap artifact-repositories the repository came from.
	Key                string `json:"key"`
	ArtifactRepository *struct {
		S3 *s3Repository `json:"s3"`
	} `json:"artifactRepository"`
}

// s3Repository is what the executor's newDriver reads of an S3 repository, with the bucket and the
// key format the check saves its artifact under.
type s3Repository struct {
	Endpoint           string                    `json:"endpoint"`
	Bucket             string                    `json:"bucket"`
	Region             string                    `json:"region"`
	Insecure           *bool                     `json:"insecure"`
	AccessKeySecret    *corev1.SecretKeySelector `json:"accessKeySecret"`
	SecretKeySecret    *corev1.SecretKeySelector `json:"secretKeySecret"`
	SessionTokenSecret *corev1.SecretKeySelector `json:"sessionTokenSecret"`
	RoleARN            string                    `json:"roleARN"`
	UseSDKCreds        bool                      `json:"useSDKCreds"`
	EncryptionOptions  *struct {
		KmsKeyID         string `json:"kmsKeyId"`
		EnableEncryption bool   `json:"enableEncryption"`
	} `json:"encryptionOptions"`
	CASecret  *corev1.SecretKeySelector `json:"caSecret"`
	KeyFormat string                    `json:"keyFormat"`
}

// s3Driver is the S3 artifact driver the executor's newDriver sets up for a repository. Its fields
// are those of v4's s3.ArtifactDriver, in their order, so that v4.go converts it as it is; v3's
// driver has these and a Context besides, which newDriver leaves unset.
type s3Driver struct {
	Endpoint              string
	Region                string
	Secure                bool
	TrustedCA             string
	AccessKey             string
	SecretKey             string
	SessionToken          string
	RoleARN               string
	UseSDKCreds           bool
	KmsKeyID              string
	KmsEncryptionContext  string
	EnableEncryption      bool
	ServerSideCustomerKey string
}

// newS3Driver reads the keys, session token and CA from the Secrets repo names, in the order and on
// the conditions of the executor's newDriver, so that the check reads no Secret Argo would not: the
// secret key (whose Secret must then be named too) and the session token only along with an access
// key, the CA whenever it is named. What is not read stays empty, as do KmsEncryptionContext and
// ServerSideCustomerKey, which the check does not set.
func newS3Driver(ctx context.Context, secrets secretReader, repo *s3Repository) (s3Driver, error) {
	driver := s3Driver{
		Endpoint: repo.Endpoint, Region: repo.Region, Secure: repo.Insecure == nil || !*repo.Insecure,
		RoleARN: repo.RoleARN, UseSDKCreds: repo.UseSDKCreds,
	}
	var err error
	if repo.AccessKeySecret != nil && repo.AccessKeySecret.Name != "" {
		if driver.AccessKey, err = secrets(ctx, repo.AccessKeySecret.Name, repo.AccessKeySecret.Key); err != nil {
			return s3Driver{}, err
		}
		if driver.SecretKey, err = secrets(ctx, repo.SecretKeySecret.Name, repo.SecretKeySecret.Key); err != nil {
			return s3Driver{}, err
		}
		if token := repo.SessionTokenSecret; token != nil && token.Name != "" {
			if driver.SessionToken, err = secrets(ctx, token.Name, token.Key); err != nil {
				return s3Driver{}, err
			}
		}
	}
	if options := repo.EncryptionOptions; options != nil {
		driver.EnableEncryption, driver.KmsKeyID = options.EnableEncryption, options.KmsKeyID
	}
	if ca := repo.CASecret; ca != nil && ca.Name != "" {
		if driver.TrustedCA, err = secrets(ctx, ca.Name, ca.Key); err != nil {
			return s3Driver{}, err
		}
	}
	return driver, nil
}

// openS3 sets up a release's own S3 driver as driver says, for the object at key in the bucket of
// the repository the release resolved, and returns how to save a file there and load it back.
type openS3 func(driver s3Driver, key string) (save, load func(path string) error)

// useS3 is a release's use check once the release has resolved the namespace default (ref, its
// ArtifactRepositoryRefStatus): it sets up the S3 driver from the repository and its Secrets as the
// executor would, saves and loads an artifact through open, and returns the ConfigMap key resolved
// and the artifact's s3:// URL.
func useS3(ctx context.Context, release string, ref any, secrets secretReader, dir string, open openS3) (string, string, error) {
	encoded, err := json.Marshal(ref)
	if err != nil {
		return "", "", err
	}
	var resolved s3Resolved
	if err := json.Unmarshal(encoded, &resolved); err != nil {
		return "", "", err
	}
	if resolved.ArtifactRepository == nil || resolved.ArtifactRepository.S3 == nil {
		return "", "", fmt.Errorf("resolved %v without an S3 repository", ref)
	}
	repo := resolved.ArtifactRepository.S3
	driver, err := newS3Driver(ctx, secrets, repo)
	if err != nil {
		return "", "", err
	}
	key := artifactKey(repo.KeyFormat, "wf-"+release)
	save, load := open(driver, key)
	err = roundTrip(dir, release, save, load)
	return resolved.Key, s3URL(repo.Bucket, key), err
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
