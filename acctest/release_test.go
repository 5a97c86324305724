package acctest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestReleaseAndMirrorInstall: make release's script builds this
// platform's release; its checksums and signature verify (and a changed
// byte does not); the tarball's binary reports the semantic version; the
// provider zips, laid out as a filesystem mirror and as a network mirror
// (served over HTTPS), install with the real terraform CLI from a
// mirror-only configuration, with a lock file of hashes, and plan the
// quickstart.
func TestReleaseAndMirrorInstall(t *testing.T) {
	if _, err := exec.LookPath("terraform"); err != nil {
		t.Fatalf("terraform is required: %v", err)
	}
	const version = "0.1.0"
	platform := runtime.GOOS + "_" + runtime.GOARCH
	dist := filepath.Join(t.TempDir(), "dist")
	sh := func(dir string, env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	sh("..", []string{"PLATFORMS=" + runtime.GOOS + "/" + runtime.GOARCH, "DIST=" + dist, "GATEHOUSE=" + gatehouseBin},
		"scripts/release.sh", version)

	// Checksums and their signature.
	sh(dist, nil, "sha256sum", "-c", "SHA256SUMS")
	sh(dist, nil, "sha256sum", "-c", "terraform-provider-gatehouse_"+version+"_SHA256SUMS")
	sh(dist, nil, "openssl", "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", "release-key.pub", "-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig")
	sums, _ := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	forged := filepath.Join(t.TempDir(), "SHA256SUMS")
	if err := os.WriteFile(forged, []byte(strings.Replace(string(sums), "a", "b", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("openssl", "pkeyutl", "-verify", "-rawin", "-pubin", "-inkey", filepath.Join(dist, "release-key.pub"),
		"-in", forged, "-sigfile", filepath.Join(dist, "SHA256SUMS.sig")).CombinedOutput(); err == nil {
		t.Errorf("a changed SHA256SUMS verified:\n%s", out)
	}
	for _, f := range []string{"gatehouse_" + version + "_" + platform + ".tar.gz", "gatehouse_" + version + "_" + platform + ".spdx.json",
		"terraform-provider-gatehouse_" + version + "_" + platform + ".zip", "terraform-provider-gatehouse_" + version + "_manifest.json"} {
		if !strings.Contains(string(sums), "  "+f+"\n") {
			t.Errorf("SHA256SUMS does not cover %s:\n%s", f, sums)
		}
	}
	var sbom struct {
		SPDXVersion string `json:"spdxVersion"`
		Packages    []struct{ Name, VersionInfo string }
	}
	b, _ := os.ReadFile(filepath.Join(dist, "gatehouse_"+version+"_"+platform+".spdx.json"))
	if err := json.Unmarshal(b, &sbom); err != nil || sbom.SPDXVersion != "SPDX-2.3" || !strings.Contains(string(b), `"github.com/jackc/pgx/v5"`) ||
		sbom.Packages[0].VersionInfo != version {
		t.Errorf("SBOM: %v %+v", err, sbom.SPDXVersion)
	}
	var manifest struct {
		Metadata struct {
			ProtocolVersions []string `json:"protocol_versions"`
		} `json:"metadata"`
	}
	b, _ = os.ReadFile(filepath.Join(dist, "terraform-provider-gatehouse_"+version+"_manifest.json"))
	if err := json.Unmarshal(b, &manifest); err != nil || len(manifest.Metadata.ProtocolVersions) != 1 || manifest.Metadata.ProtocolVersions[0] != "6.0" {
		t.Errorf("manifest: %v %s", err, b)
	}
	unpacked := t.TempDir()
	sh(unpacked, nil, "tar", "-xzf", filepath.Join(dist, "gatehouse_"+version+"_"+platform+".tar.gz"))
	if out := sh(unpacked, nil, "./gatehouse", "--version"); !strings.HasPrefix(out, "gatehouse "+version+" (commit ") {
		t.Errorf("the released binary says %q", out)
	}

	// The provider from mirrors.
	mirror := t.TempDir()
	sh("..", nil, "scripts/provider-mirror.sh", dist, mirror)
	zip, _ := os.ReadFile(filepath.Join(dist, "terraform-provider-gatehouse_"+version+"_"+platform+".zip"))
	zipSum := sha256.Sum256(zip)
	initAndPlan := func(name, cliConfig string, env []string, wantHash string) {
		t.Helper()
		home := t.TempDir()
		dir := filepath.Join(home, "quickstart")
		copyDir(t, "../examples/terraform/quickstart", dir)
		rc := filepath.Join(home, "terraformrc")
		if err := os.WriteFile(rc, []byte(cliConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		env = append(env, "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_PLUGIN_CACHE_DIR=")
		out := sh(dir, env, "terraform", "init", "-input=false", "-no-color")
		if !strings.Contains(out, "Installed gatehouse-dev/gatehouse v"+version) {
			t.Errorf("%s: terraform init did not install %s from the mirror:\n%s", name, version, out)
		}
		lock, err := os.ReadFile(filepath.Join(dir, ".terraform.lock.hcl"))
		if err != nil || !strings.Contains(string(lock), `version     = "`+version+`"`) || !strings.Contains(string(lock), wantHash) {
			t.Errorf("%s: the lock file lacks the version or %s:\n%s", name, wantHash, lock)
		}
		sh(dir, nil, gatehouseBin, "keygen", "--out", "keys")
		if out := sh(dir, env, "terraform", "plan", "-input=false", "-no-color"); !strings.Contains(out, "Plan: ") || !strings.Contains(out, " to add") {
			t.Errorf("%s: terraform plan:\n%s", name, out)
		}
	}
	initAndPlan("filesystem mirror", `provider_installation {
  filesystem_mirror {
    path    = "`+filepath.Join(mirror, "filesystem")+`"
    include = ["registry.terraform.io/gatehouse-dev/gatehouse"]
  }
}
`, nil, "h1:")

	srv := httptest.NewTLSServer(http.StripPrefix("/providers/", http.FileServer(http.Dir(filepath.Join(mirror, "network")))))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	// The GitOps example's installer: a pinned release over HTTPS, the
	// signature checked against the committed key, then the files; a
	// release signed by another key is refused.
	rel := httptest.NewTLSServer(http.StripPrefix("/releases/v"+version+"/", http.FileServer(http.Dir(dist))))
	defer rel.Close()
	relCA := filepath.Join(t.TempDir(), "ca.pem")
	_ = os.WriteFile(relCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rel.Certificate().Raw}), 0o644)
	ghDir := filepath.Join(t.TempDir(), ".github")
	_ = os.MkdirAll(ghDir, 0o755)
	script, _ := os.ReadFile("../examples/gitops/.github/install-gatehouse.sh")
	_ = os.WriteFile(filepath.Join(ghDir, "install-gatehouse.sh"), script, 0o755)
	_ = os.WriteFile(filepath.Join(ghDir, "gatehouse-release-key.pub"), mustRead(t, filepath.Join(dist, "release-key.pub")), 0o644)
	home, bindir := t.TempDir(), t.TempDir()
	installEnv := []string{"GATEHOUSE_VERSION=" + version, "GATEHOUSE_RELEASES=" + rel.URL + "/releases", "CURL_CA_BUNDLE=" + relCA,
		"BINDIR=" + bindir, "HOME=" + home}
	if out := sh(ghDir, installEnv, filepath.Join(ghDir, "install-gatehouse.sh")); !strings.Contains(out, "gatehouse "+version+" (commit ") {
		t.Errorf("install-gatehouse.sh:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(home, ".terraform.d/plugins/registry.terraform.io/gatehouse-dev/gatehouse",
		"terraform-provider-gatehouse_"+version+"_"+platform+".zip")); err != nil {
		t.Errorf("the provider zip is not in the local mirror: %v", err)
	}
	otherKey := t.TempDir()
	sh(otherKey, nil, gatehouseBin, "keygen", "--out", ".")
	_ = os.WriteFile(filepath.Join(ghDir, "gatehouse-release-key.pub"), mustRead(t, filepath.Join(otherKey, "gatehouse.pub")), 0o644)
	cmd := exec.Command(filepath.Join(ghDir, "install-gatehouse.sh"))
	cmd.Env = append(os.Environ(), append(installEnv, "BINDIR="+t.TempDir())...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Signature Verification Failure") {
		t.Errorf("install-gatehouse.sh should refuse a release not signed by the committed key: %v\n%s", err, out)
	}

	initAndPlan("network mirror", `provider_installation {
  network_mirror {
    url     = "`+srv.URL+`/providers/"
    include = ["registry.terraform.io/gatehouse-dev/gatehouse"]
  }
}
`, []string{"SSL_CERT_FILE=" + ca}, "h1:")
	// Terraform checks the zip against the mirror's zh: hash: the mirror's
	// is the zip's, and a wrong one fails init.
	idxFile := filepath.Join(mirror, "network", "registry.terraform.io/gatehouse-dev/gatehouse", version+".json")
	idx, _ := os.ReadFile(idxFile)
	if !strings.Contains(string(idx), "zh:"+hex.EncodeToString(zipSum[:])) {
		t.Errorf("the network mirror's %s.json does not carry the zip's hash:\n%s", version, idx)
	}
	wrong := strings.Replace(string(idx), "zh:"+hex.EncodeToString(zipSum[:]), "zh:"+strings.Repeat("0", 64), 1)
	if err := os.WriteFile(idxFile, []byte(wrong), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "quickstart")
	copyDir(t, "../examples/terraform/quickstart", dir)
	rc := filepath.Join(t.TempDir(), "terraformrc")
	_ = os.WriteFile(rc, []byte(`provider_installation {
  network_mirror {
    url = "`+srv.URL+`/providers/"
  }
}
`), 0o644)
	cmd = exec.Command("terraform", "init", "-input=false", "-no-color")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TF_CLI_CONFIG_FILE="+rc, "CHECKPOINT_DISABLE=1", "SSL_CERT_FILE="+ca)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "checksum") {
		t.Errorf("terraform init accepted a zip whose hash the mirror does not list: %v\n%s", err, out)
	}
}
