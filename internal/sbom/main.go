// Command sbom writes an SPDX 2.3 JSON software bill of materials for a Go
// binary, from the build information the Go toolchain embeds in it: the
// main module, every module linked in with its version and go.sum hash,
// and the toolchain. `make release` runs it on each binary it builds.
//
//	go run ./internal/sbom BINARY VERSION > BINARY.spdx.json
//
// VERSION is the release's version (the binary's build information does
// not keep -ldflags when built with -trimpath).
package main

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

type pkg struct {
	Name             string   `json:"name"`
	SPDXID           string   `json:"SPDXID"`
	VersionInfo      string   `json:"versionInfo"`
	DownloadLocation string   `json:"downloadLocation"`
	FilesAnalyzed    bool     `json:"filesAnalyzed"`
	Checksums        []sum    `json:"checksums,omitempty"`
	ExternalRefs     []extRef `json:"externalRefs,omitempty"`
	Supplier         string   `json:"supplier,omitempty"`
	PrimaryPurpose   string   `json:"primaryPackagePurpose,omitempty"`
}

type sum struct {
	Algorithm string `json:"algorithm"`
	Value     string `json:"checksumValue"`
}

type extRef struct {
	Category string `json:"referenceCategory"`
	Type     string `json:"referenceType"`
	Locator  string `json:"referenceLocator"`
}

type relationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: sbom BINARY VERSION > BINARY.spdx.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "sbom: %v\n", err)
		os.Exit(1)
	}
}

func run(path, version string, w io.Writer) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(data)
	name := filepath.Base(path)
	main := pkg{Name: bi.Main.Path, SPDXID: "SPDXRef-Package-main", VersionInfo: version, DownloadLocation: "NOASSERTION",
		Checksums: []sum{{"SHA256", hex.EncodeToString(digest[:])}}, PrimaryPurpose: "APPLICATION",
		ExternalRefs: []extRef{{"PACKAGE-MANAGER", "purl", purl(bi.Main.Path, version)}}}
	pkgs := []pkg{main,
		{Name: "golang.org/toolchain", SPDXID: "SPDXRef-Package-go", VersionInfo: bi.GoVersion, DownloadLocation: "https://go.dev/dl/", PrimaryPurpose: "LIBRARY"}}
	rels := []relationship{{"SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Package-main"}, {"SPDXRef-Package-main", "BUILD_DEPENDENCY_OF", "SPDXRef-Package-go"}}
	for i, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		p := pkg{Name: m.Path, SPDXID: fmt.Sprintf("SPDXRef-Package-%d", i+1), VersionInfo: m.Version,
			DownloadLocation: "https://proxy.golang.org/" + strings.ToLower(m.Path) + "/@v/" + m.Version + ".zip", PrimaryPurpose: "LIBRARY",
			ExternalRefs: []extRef{{"PACKAGE-MANAGER", "purl", purl(m.Path, m.Version)}}}
		if h, ok := strings.CutPrefix(m.Sum, "h1:"); ok {
			if raw, err := base64.StdEncoding.DecodeString(h); err == nil {
				p.Checksums = []sum{{"SHA256", hex.EncodeToString(raw)}}
			}
		}
		pkgs = append(pkgs, p)
		rels = append(rels, relationship{"SPDXRef-Package-main", "DEPENDS_ON", p.SPDXID})
	}
	doc := map[string]any{
		"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
		"name":              name + "-" + version,
		"documentNamespace": "https://github.com/gatehouse-dev/gatehouse/spdx/" + name + "-" + version + "-" + hex.EncodeToString(digest[:8]),
		"creationInfo":      map[string]any{"created": created(), "creators": []string{"Tool: gatehouse-internal-sbom"}},
		"packages":          pkgs, "relationships": rels,
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

// created honours SOURCE_DATE_EPOCH, so that a release can be rebuilt
// byte for byte.
func created() string {
	t := time.Now().UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var n int64
		if _, err := fmt.Sscan(s, &n); err == nil {
			t = time.Unix(n, 0).UTC()
		}
	}
	return t.Format(time.RFC3339)
}

func purl(path, version string) string {
	return "pkg:golang/" + path + "@" + version
}
