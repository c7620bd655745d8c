package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/workflow/artifactrepositories"
	"github.com/argoproj/argo-workflows/v3/workflow/artifacts/s3"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

var v3Release = release{
	name: moduleVersion("github.com/argoproj/argo-workflows/v3"),
	decode: func(data []byte) ([]byte, error) {
		var repository wfv1.ArtifactRepository
		if err := yaml.UnmarshalStrict(data, &repository); err != nil {
			return nil, err
		}
		return json.Marshal(repository)
	},
	use: func(ctx context.Context, k kubernetes.Interface, namespace string, secrets secretReader, dir string) (string, string, error) {
		ref, err := artifactrepositories.New(k, "argo", nil).Resolve(ctx, nil, namespace)
		if err != nil {
			return "", "", err
		}
		if ref.ArtifactRepository == nil || ref.ArtifactRepository.S3 == nil {
			return "", "", fmt.Errorf("resolved %v without an S3 repository", ref)
		}
		repo := ref.ArtifactRepository.S3
		driver, err := v3Driver(ctx, &repo.S3Bucket, secrets)
		if err != nil {
			return "", "", err
		}
		artifact := &wfv1.Artifact{ArtifactLocation: wfv1.ArtifactLocation{S3: &wfv1.S3Artifact{
			S3Bucket: repo.S3Bucket, Key: artifactKey(repo.KeyFormat, "wf-v3"),
		}}}
		path, content, err := payload(dir, "v3")
		if err != nil {
			return "", "", err
		}
		if err := driver.Save(path, artifact); err != nil {
			return "", "", fmt.Errorf("save: %w", err)
		}
		back := filepath.Join(dir, "v3-in.txt")
		if err := driver.Load(artifact, back); err != nil {
			return "", "", fmt.Errorf("load: %w", err)
		}
		url := fmt.Sprintf("s3://%s/%s", repo.Bucket, artifact.S3.Key)
		return ref.Key, url, loaded(back, content)
	},
}

// v3Driver builds the S3 driver from a repository's bucket as the v3 executor's newDriver does:
// keys (with a session token) and CA from the Secrets the repository names, TLS unless insecure.
func v3Driver(ctx context.Context, bucket *wfv1.S3Bucket, secrets secretReader) (*s3.ArtifactDriver, error) {
	driver := &s3.ArtifactDriver{
		Endpoint:    bucket.Endpoint,
		Region:      bucket.Region,
		Secure:      bucket.Insecure == nil || !*bucket.Insecure,
		RoleARN:     bucket.RoleARN,
		UseSDKCreds: bucket.UseSDKCreds,
	}
	var err error
	if bucket.AccessKeySecret != nil && bucket.AccessKeySecret.Name != "" {
		if driver.AccessKey, err = secrets(ctx, bucket.AccessKeySecret.Name, bucket.AccessKeySecret.Key); err != nil {
			return nil, err
		}
		if driver.SecretKey, err = secrets(ctx, bucket.SecretKeySecret.Name, bucket.SecretKeySecret.Key); err != nil {
			return nil, err
		}
		if bucket.SessionTokenSecret != nil && bucket.SessionTokenSecret.Name != "" {
			if driver.SessionToken, err = secrets(ctx, bucket.SessionTokenSecret.Name, bucket.SessionTokenSecret.Key); err != nil {
				return nil, err
			}
		}
	}
	if bucket.CASecret != nil && bucket.CASecret.Name != "" {
		if driver.TrustedCA, err = secrets(ctx, bucket.CASecret.Name, bucket.CASecret.Key); err != nil {
			return nil, err
		}
	}
	if options := bucket.EncryptionOptions; options != nil {
		driver.EnableEncryption, driver.KmsKeyID = options.EnableEncryption, options.KmsKeyId
	}
	return driver, nil
}
