package main

import (
	"context"

	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/workflow/artifactrepositories"
	"github.com/argoproj/argo-workflows/v3/workflow/artifacts/s3"
	"k8s.io/client-go/kubernetes"
)

var v3Release = newRelease[wfv1.ArtifactRepository]("github.com/argoproj/argo-workflows/v3", useV3)

// useV3 is the use check with v3's own packages: its artifactrepositories, driver and artifact.
func useV3(ctx context.Context, k kubernetes.Interface, namespace string, secrets secretReader, dir string) (string, string, error) {
	ref, err := artifactrepositories.New(k, "argo", nil).Resolve(ctx, nil, namespace)
	if err != nil {
		return "", "", err
	}
	return useS3(ctx, "v3", ref, secrets, dir, func(d s3Driver, key string) (save, load func(path string) error) {
		// The driver the v3 executor's newDriver builds for this bucket (its Context unset).
		driver := &s3.ArtifactDriver{
			Endpoint: d.Endpoint, Region: d.Region, Secure: d.Secure, TrustedCA: d.TrustedCA,
			AccessKey: d.AccessKey, SecretKey: d.SecretKey, SessionToken: d.SessionToken,
			RoleARN: d.RoleARN, UseSDKCreds: d.UseSDKCreds,
			KmsKeyID: d.KmsKeyID, KmsEncryptionContext: d.KmsEncryptionContext,
			EnableEncryption: d.EnableEncryption, ServerSideCustomerKey: d.ServerSideCustomerKey,
		}
		artifact := &wfv1.Artifact{ArtifactLocation: wfv1.ArtifactLocation{S3: &wfv1.S3Artifact{
			S3Bucket: ref.ArtifactRepository.S3.S3Bucket, Key: key,
		}}}
		return func(path string) error { return driver.Save(path, artifact) },
			func(path string) error { return driver.Load(artifact, path) }
	})
}
