// Command imgreg serves, read-only and on a loopback address, the container
// images critest pulls, built in memory from the root filesystems rootfs.sh
// prepares out of Debian packages. Nothing is ever pulled from the network:
// containerd's CRI plugin is configured with a registry mirror for each
// upstream host (registry.k8s.io, k8s.gcr.io, gcr.io, docker.io,
// public.ecr.aws) that points here, and a mirror asks for the upstream
// repository path, so registry.k8s.io/e2e-test-images/busybox:1.29-2 is
// served as /v2/e2e-test-images/busybox/manifests/1.29-2.
//
// It implements the pull half of the OCI distribution API (GET and HEAD of
// /v2/, manifests by tag or digest, blobs by digest) with the standard
// library only. Layers are uncompressed OCI tar layers with sorted entries,
// fixed times and kept owners, modes and hard links, so digests are the
// same from run to run.
//
// usage: imgreg -rootfs DIR [-addr 127.0.0.1:5000]
//
// It prints "READY addr" once it listens and every image is built, then one
// line per reference, and serves until SIGTERM or SIGINT.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
	defaultPath   = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// epoch is every file's and every image's time, for reproducible digests.
var epoch = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// runConfig is the part of an image configuration the runtime reads.
type runConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

type imageConfig struct {
	Created      time.Time `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       runConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// store holds every blob by digest and every manifest digest by
// "repository:tag"; it is written before serving starts and read-only after.
type store struct {
	blobs map[string][]byte
	tags  map[string]string
}

func digestOf(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func (s *store) put(b []byte) string {
	d := digestOf(b)
	s.blobs[d] = b
	return d
}

// image stores the config and manifest of an image made of layers (each an
// uncompressed tar already stored) and returns the manifest's digest.
func (s *store) image(cfg runConfig, layers ...[]byte) (string, error) {
	if len(cfg.Env) == 0 {
		cfg.Env = []string{defaultPath}
	}
	ic := imageConfig{Created: epoch, Architecture: "amd64", OS: "linux", Config: cfg}
	ic.RootFS.Type = "layers"
	m := manifest{SchemaVersion: 2, MediaType: mediaManifest}
	for _, l := range layers {
		d := s.put(l)
		ic.RootFS.DiffIDs = append(ic.RootFS.DiffIDs, d) // uncompressed: digest == diff ID
		m.Layers = append(m.Layers, descriptor{MediaType: mediaLayer, Digest: d, Size: int64(len(l))})
	}
	cb, err := json.Marshal(ic)
	if err != nil {
		return "", err
	}
	m.Config = descriptor{MediaType: mediaConfig, Digest: s.put(cb), Size: int64(len(cb))}
	mb, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	return s.put(mb), nil
}

// dirLayer tars the tree under dir, sorted, with fixed times, numeric owners,
// full modes (setuid included), symlinks as symlinks and hard links as links
// to their first path.
func dirLayer(dir string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", dir, err)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	first := map[[2]uint64]string{} // (device, inode) -> first name in the layer
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("layer %s: no stat for %s", dir, p)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return nil, err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %s: %w", dir, p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = int(st.Uid), int(st.Gid), "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if name, seen := first[key]; seen {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, name, 0
				if err := tw.WriteHeader(hdr); err != nil {
					return nil, err
				}
				continue
			}
			first[key] = hdr.Name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			if _, err := tw.Write(b); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// fileLayer is a layer holding one empty file, which is how upstream's
// test images (test-image-1, test-image-tag:all, ...) differ from each other.
func fileLayer(name string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// Writes into a bytes.Buffer cannot fail.
	_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX})
	_ = tw.Close()
	return buf.Bytes()
}

// build makes every image critest (v1.37) pulls and tags it under its
// upstream repository path, host dropped.
func build(rootfs string) (*store, error) {
	s := &store{blobs: map[string][]byte{}, tags: map[string]string{}}
	layers := map[string][]byte{}
	for _, d := range []string{"base", "nginx", "nginx-12003", "httpd", "nonewprivs", "group", "pause"} {
		l, err := dirLayer(filepath.Join(rootfs, d))
		if err != nil {
			return nil, err
		}
		layers[d] = l
	}
	base := layers["base"]
	sh := runConfig{Cmd: []string{"sh"}}
	nginx := runConfig{Cmd: []string{"nginx", "-g", "daemon off;"}, StopSignal: "SIGQUIT",
		ExposedPorts: map[string]struct{}{"80/tcp": {}}}
	type spec struct {
		refs   []string
		cfg    runConfig
		layers [][]byte
	}
	const e2e, cri = "e2e-test-images/", "k8s-staging-cri-tools/"
	specs := []spec{
		{[]string{e2e + "busybox:1.29-2", "library/busybox:latest", "library/busybox:1.37.0",
			// the image-listing benchmark (critest -benchmark)
			"docker/library/busybox:1", "docker/library/busybox:1-glibc", "docker/library/busybox:1-musl",
			"docker/library/busybox:1-uclibc", "docker/library/busybox:1.35.0-glibc"}, sh, [][]byte{base}},
		{[]string{e2e + "nginx:1.14-2"}, nginx, [][]byte{base, layers["nginx"]}},
		{[]string{cri + "hostnet-nginx-amd64:latest"}, nginx, [][]byte{base, layers["nginx"], layers["nginx-12003"]}},
		{[]string{e2e + "httpd:2.4.39-4"}, runConfig{Cmd: []string{"httpd-foreground"},
			ExposedPorts: map[string]struct{}{"80/tcp": {}}}, [][]byte{base, layers["httpd"]}},
		{[]string{e2e + "nonewprivs:1.3"}, runConfig{Entrypoint: []string{"/usr/local/bin/nnp"}},
			[][]byte{base, layers["nonewprivs"]}},
		// the sandbox image, and "same image from different registries"
		{[]string{"pause:3.6", "pause:3.8", "pause:3.9", "pause:3.10"},
			runConfig{Entrypoint: []string{"/pause"}, User: "65535:65535"}, [][]byte{layers["pause"]}},
		{[]string{cri + "test-image-tags:1", cri + "test-image-tags:2", cri + "test-image-tags:3"},
			sh, [][]byte{base, fileLayer("same-image")}},
		{[]string{cri + "test-image-user-uid:latest"}, runConfig{Cmd: []string{"sh"}, User: "1002"}, [][]byte{base}},
		{[]string{cri + "test-image-user-username:latest"}, runConfig{Cmd: []string{"sh"}, User: "www-data"}, [][]byte{base}},
		{[]string{cri + "test-image-user-uid-group:latest"}, runConfig{Cmd: []string{"sh"}, User: "1003:1004"}, [][]byte{base}},
		{[]string{cri + "test-image-user-username-group:latest"}, runConfig{Cmd: []string{"sh"}, User: "www-data:1004"}, [][]byte{base}},
		{[]string{cri + "test-image-predefined-group:latest"}, runConfig{Cmd: []string{"sh"}, User: "1000"},
			[][]byte{base, layers["group"]}},
	}
	// Images that differ by one empty file named after them. test-image-digest
	// is pulled by an upstream digest no local build can reproduce; its tag is
	// served anyway so that the failure is the digest's alone.
	for _, n := range []string{"test-image-latest", "test-image-digest", "test-image-1", "test-image-2", "test-image-3"} {
		specs = append(specs, spec{[]string{cri + n + ":latest"}, sh, [][]byte{base, fileLayer(n)}})
	}
	for _, t := range []string{"test", "all"} {
		specs = append(specs, spec{[]string{cri + "test-image-tag:" + t}, sh, [][]byte{base, fileLayer(t)}})
	}
	for _, sp := range specs {
		d, err := s.image(sp.cfg, sp.layers...)
		if err != nil {
			return nil, err
		}
		for _, r := range sp.refs {
			s.tags[r] = d
		}
	}
	return s, nil
}

// errorBody is the distribution API's error document.
func errorBody(code, msg string) []byte {
	b, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	return b
}

// ServeHTTP answers the pull half of the distribution API.
func (s *store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.WriteHeader(http.StatusMethodNotAllowed)
		_, _ = w.Write(errorBody("UNSUPPORTED", "read-only registry"))
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/v2/")
	if p == "" || p == r.URL.Path {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
		return
	}
	var body []byte
	var digest, ctype string
	if i := strings.LastIndex(p, "/manifests/"); i > 0 {
		repo, ref := p[:i], p[i+len("/manifests/"):]
		digest = ref
		if !strings.HasPrefix(ref, "sha256:") {
			digest = s.tags[repo+":"+ref]
		}
		body, ctype = s.blobs[digest], mediaManifest
		if body == nil {
			log.Printf("manifest unknown: %s", p)
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write(errorBody("MANIFEST_UNKNOWN", "manifest unknown: "+p))
			return
		}
	} else if i := strings.LastIndex(p, "/blobs/"); i > 0 {
		digest = p[i+len("/blobs/"):]
		body, ctype = s.blobs[digest], "application/octet-stream"
		if body == nil {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write(errorBody("BLOB_UNKNOWN", "blob unknown: "+digest))
			return
		}
	} else {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write(errorBody("NAME_UNKNOWN", "unknown path: "+p))
		return
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:5000", "listen address, loopback only")
	rootfs := flag.String("rootfs", "", "directory made by rootfs.sh (required)")
	flag.Parse()
	log.SetPrefix("imgreg: ")
	if *rootfs == "" {
		log.Fatal("-rootfs is required")
	}
	host, _, err := net.SplitHostPort(*addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Fatalf("-addr %q: must be a loopback IP:port", *addr)
	}
	s, err := build(*rootfs)
	if err != nil {
		log.Fatalf("build images from %s: %v", *rootfs, err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()

	refs := make([]string, 0, len(s.tags))
	for r := range s.tags {
		refs = append(refs, r)
	}
	sort.Strings(refs)
	fmt.Println("READY", ln.Addr())
	for _, r := range refs {
		fmt.Printf("%s\t%s\n", r, s.tags[r])
	}
	select {
	case err := <-done:
		log.Fatal(err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
	}
}
