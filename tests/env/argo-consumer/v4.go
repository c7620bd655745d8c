package main

import (
	"context"

	wfv1 "github.com/argoproj/argo-workflows/v4/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v4/util/logging"
	"github.com/argoproj/argo-workflows/v4/workflow/artifactrepositories"
	"github.com/argoproj/argo-workflows/v4/workflow/artifacts/s3"
	"k8s.io/client-go/kubernetes"
)

var v4Release = newRelease[wfv1.ArtifactRepository]("github.com/argoproj/argo-workflows/v4", useV4)

// useV4 is the use check with v4's own packages: its artifactrepositories, driver and artifact.
func useV4(ctx context.Context, k kubernetes.Interface, namespace string, secrets secretReader, dir string) (string, string, error) {
	// v4 takes its logger from the context, as its controller and executor set it up.
	ctx = logging.WithLogger(ctx, logging.NewSlogLogger(logging.Warn, logging.Text))
	ref, err := artifactrepositories.New(k, "argo", nil).Resolve(ctx, nil, namespace)
	if err != nil {
		return "", "", err
	}
	return useS3(ctx, "v4", ref, secrets, dir, func(d s3Driver, key string) (save, load func(path string) error) {
		// The driver the v4 executor's newDriver builds for this bucket: s3Driver's very fields.
		driver := s3.ArtifactDriver(d)
		artifact := &wfv1.Artifact{ArtifactLocation: wfv1.ArtifactLocation{S3: &wfv1.S3Artifact{
			S3Bucket: ref.ArtifactRepository.S3.S3Bucket, Key: key,
		}}}
		return func(path string) error { return driver.Save(ctx, path, artifact) },
			func(path string) error { return driver.Load(ctx, artifact, path) }
	})
}
