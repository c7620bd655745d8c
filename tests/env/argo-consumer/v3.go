package main

import (
	"context"
	"fmt"

	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/workflow/artifactrepositories"
	"github.com/argoproj/argo-workflows/v3/workflow/artifacts/s3"
	"k8s.io/client-go/kubernetes"
)

var v3Release = release{
	name:   moduleVersion("github.com/argoproj/argo-workflows/v3"),
	decode: decodeStrictly[wfv1.ArtifactRepository],
	use: func(ctx context.Context, k kubernetes.Interface, namespace string, secrets secretReader, dir string) (string, string, error) {
		ref, err := artifactrepositories.New(k, "argo", nil).Resolve(ctx, nil, namespace)
		if err != nil {
			return "", "", err
		}
		if ref.ArtifactRepository == nil || ref.ArtifactRepository.S3 == nil {
			return "", "", fmt.Errorf("resolved %v without an S3 repository", ref)
		}
		repo := ref.ArtifactRepository.S3
		read, err := readS3Secrets(ctx, secrets, repo.AccessKeySecret, repo.SecretKeySecret, repo.SessionTokenSecret, repo.CASecret)
		if err != nil {
			return "", "", err
		}
		// The driver the v3 executor's newDriver builds for this bucket.
		driver := &s3.ArtifactDriver{
			Endpoint: repo.Endpoint, Region: repo.Region, Secure: repo.Insecure == nil || !*repo.Insecure,
			RoleARN: repo.RoleARN, UseSDKCreds: repo.UseSDKCreds,
			AccessKey: read.accessKey, SecretKey: read.secretKey, SessionToken: read.sessionToken, TrustedCA: read.trustedCA,
		}
		if options := repo.EncryptionOptions; options != nil {
			driver.EnableEncryption, driver.KmsKeyID = options.EnableEncryption, options.KmsKeyId
		}
		artifact := &wfv1.Artifact{ArtifactLocation: wfv1.ArtifactLocation{S3: &wfv1.S3Artifact{
			S3Bucket: repo.S3Bucket, Key: artifactKey(repo.KeyFormat, "wf-v3"),
		}}}
		err = roundTrip(dir, "v3",
			func(path string) error { return driver.Save(path, artifact) },
			func(path string) error { return driver.Load(artifact, path) })
		return ref.Key, s3URL(repo.Bucket, artifact.S3.Key), err
	},
}
