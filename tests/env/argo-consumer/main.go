// Command argo-consumer checks the artifact repositories a Stack renders with Argo Workflows' own
// code, from two releases at once (the v3 module and the v4 module):
//
//	argo-consumer decode FILE...
//	    strictly decodes each file into each release's ArtifactRepository; exits non-zero if any
//	    release rejects a file, saying which and why.
//	argo-consumer use NAMESPACE KEY
//	    resolves the namespace's default artifact repository (no artifactRepositoryRef) through
//	    each release's workflow/artifactrepositories against the apiserver of $KUBECONFIG, checks
//	    that it is KEY of ConfigMap artifact-repositories, then saves and loads an artifact with
//	    each release's S3 artifact driver, its credentials and CA read from the Secrets the
//	    repository names, as Argo's executor reads them.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// release is what each Argo module under test provides.
type release struct {
	name string
	// decode strictly decodes an ArtifactRepository and returns it re-encoded as JSON.
	decode func(data []byte) ([]byte, error)
	use    useCheck
}

// useCheck resolves the namespace default and round-trips an artifact; it returns the resolved
// ConfigMap key and the artifact's s3:// URL.
type useCheck func(ctx context.Context, k kubernetes.Interface, namespace string, secrets secretReader, dir string) (string, string, error)

// newRelease is the release of the Argo module at modulePath, whose ArtifactRepository type is R.
func newRelease[R any](modulePath string, use useCheck) release {
	return release{name: moduleVersion(modulePath), decode: decodeStrictly[R], use: use}
}

var releases = []release{v3Release, v4Release}

// secretReader reads a key of a Secret in the workflow's namespace, as Argo's executor does.
type secretReader func(ctx context.Context, name, key string) (string, error)

func main() {
	if len(os.Args) < 2 {
		fail("usage: argo-consumer decode FILE... | argo-consumer use NAMESPACE KEY")
	}
	var err error
	switch os.Args[1] {
	case "decode":
		err = decode(os.Args[2:])
	case "use":
		if len(os.Args) != 4 {
			fail("usage: argo-consumer use NAMESPACE KEY")
		}
		err = use(os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err.Error())
	}
}

// moduleVersion is the version of a module built into this program, as go.mod pins it.
func moduleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, module := range info.Deps {
			if module.Path == path {
				return module.Version
			}
		}
	}
	return path
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "argo-consumer:", message)
	os.Exit(1)
}

func decode(files []string) error {
	rejected := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		for _, r := range releases {
			encoded, err := r.decode(data)
			if err == nil {
				err = sameFields(data, encoded)
			}
			if err != nil {
				rejected++
				fmt.Printf("argo %s: %s rejected: %v\n", r.name, filepath.Base(file), err)
				continue
			}
			fmt.Printf("argo %s: %s decodes strictly into ArtifactRepository\n", r.name, filepath.Base(file))
		}
	}
	if rejected > 0 {
		return fmt.Errorf("%d decodings rejected", rejected)
	}
	return nil
}

// sameFields checks that re-encoding loses nothing: every field rendered is a field Argo keeps.
func sameFields(rendered, encoded []byte) error {
	var want, got any
	if err := yaml.Unmarshal(rendered, &want); err != nil {
		return err
	}
	if err := yaml.Unmarshal(encoded, &got); err != nil {
		return err
	}
	w, _ := yaml.Marshal(want)
	g, _ := yaml.Marshal(got)
	if !bytes.Equal(w, g) {
		return fmt.Errorf("re-encoded differently:\n%s\nvs rendered\n%s", g, w)
	}
	return nil
}

func use(namespace, key string) error {
	config, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secrets := func(ctx context.Context, name, key string) (string, error) {
		secret, err := client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		value, ok := secret.Data[key]
		if !ok {
			return "", fmt.Errorf("secret %s has no key %s", name, key)
		}
		return string(value), nil
	}
	dir, err := os.MkdirTemp("", "argo-consumer")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, r := range releases {
		resolved, url, err := r.use(ctx, client, namespace, secrets, dir)
		if err != nil {
			return fmt.Errorf("argo %s: %w", r.name, err)
		}
		if resolved != key {
			return fmt.Errorf("argo %s: the namespace default is key %q, not %q", r.name, resolved, key)
		}
		fmt.Printf("argo %s: resolved the namespace default to artifact-repositories/%s; saved and loaded %s\n", r.name, resolved, url)
	}
	return nil
}
