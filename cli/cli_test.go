package cli

// Acceptance tests for the gatehouse CLI. They drive the real command tree
// in-process through run(), against the real example policy in
// examples/quickstart, and check exit codes and the messages that explain them.

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/spf13/cobra"

	"github.com/gatehouse-dev/gatehouse/bundle"
)

// quickstart is the real example policy, relative to this package.
var quickstart = filepath.Join("..", "examples", "quickstart")

// sourceDateEpoch is a fixed build time: 2025-11-24T16:00:00Z.
const sourceDateEpoch = "1764000000"

// Reasons a tampered bundle may be refused with; every refusal must name one.
var tamperReasons = []string{"malformed", "not trusted", "does not verify", "canonical", "schema"}

// cliResult is what one in-process invocation produced.
type cliResult struct {
	code           int
	stdout, stderr string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\n--- stdout ---\n%s--- stderr ---\n%s", r.code, r.stdout, r.stderr)
}

// gatehouse runs the CLI in-process with args.
func gatehouse(t testing.TB, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// mustRun runs the CLI and fails the test unless it exits with want.
func mustRun(t testing.TB, want int, args ...string) cliResult {
	t.Helper()
	r := gatehouse(t, args...)
	if r.code != want {
		t.Fatalf("gatehouse %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

func assertContains(t testing.TB, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, got)
		}
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// keyPair makes a fresh signing key pair with `gatehouse keygen`.
func keyPair(t testing.TB) (key, pub string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	mustRun(t, exitOK, "keygen", "--out", dir)
	return filepath.Join(dir, "gatehouse.key"), filepath.Join(dir, "gatehouse.pub")
}

// buildBundle builds dir into a bundle file signed with key and returns its path.
func buildBundle(t testing.TB, dir, key string, extra ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "policy.bundle")
	mustRun(t, exitOK, append([]string{"bundle", "build", dir, "--key", key, "--out", out}, extra...)...)
	return out
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyQuickstart copies the example policy into a fresh temporary directory.
func copyQuickstart(t testing.TB) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "policy")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(quickstart)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		writeFile(t, filepath.Join(dst, e.Name()), readFile(t, filepath.Join(quickstart, e.Name())))
	}
	return dst
}

// replaceOnce replaces the single occurrence of old in path. It fails when old
// does not occur exactly once, so that a change to the example is noticed
// instead of silently testing nothing.
func replaceOnce(t testing.TB, path, old, new string) {
	t.Helper()
	s := string(readFile(t, path))
	if n := strings.Count(s, old); n != 1 {
		t.Fatalf("%s: %q occurs %d times, want exactly 1", path, old, n)
	}
	writeFile(t, path, []byte(strings.Replace(s, old, new, 1)))
}

// countTests counts the test blocks of the example policy.
func countTests(t testing.TB) int {
	t.Helper()
	re := regexp.MustCompile(`(?m)^test "`)
	files, err := filepath.Glob(filepath.Join(quickstart, "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		n += len(re.FindAllIndex(readFile(t, f), -1))
	}
	if n == 0 {
		t.Fatal("the quickstart has no test blocks")
	}
	return n
}

// --- 1. keygen ---------------------------------------------------------------

func TestKeygenWritesPrivateKey0600AndRefusesToOverwriteWithoutForce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys") // does not exist yet: keygen creates it
	keyPath, pubPath := filepath.Join(dir, "gatehouse.key"), filepath.Join(dir, "gatehouse.pub")

	r := mustRun(t, exitOK, "keygen", "--out", dir)
	assertContains(t, "keygen stdout", r.stdout, keyPath, pubPath, "mode 0600", "key id ")

	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("private key mode = %04o, want 0600", got)
	}
	priv, err := bundle.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatalf("private key does not load: %v", err)
	}
	pub, err := bundle.LoadPublicKey(pubPath)
	if err != nil {
		t.Fatalf("public key does not load: %v", err)
	}
	if !pub.Equal(priv.Public()) {
		t.Error("gatehouse.pub is not the public half of gatehouse.key")
	}
	assertContains(t, "keygen stdout", r.stdout, "key id "+bundle.KeyID(pub))
	oldKey, oldPub := readFile(t, keyPath), readFile(t, pubPath)

	t.Run("again without --force refuses and keeps the keys", func(t *testing.T) {
		r := mustRun(t, exitFailure, "keygen", "--out", dir)
		assertContains(t, "stderr", r.stderr, keyPath+" already exists", "refusing to overwrite", "--force")
		if !bytes.Equal(readFile(t, keyPath), oldKey) || !bytes.Equal(readFile(t, pubPath), oldPub) {
			t.Error("a refused keygen changed the existing key files")
		}
	})

	t.Run("refuses when only the public key exists", func(t *testing.T) {
		only := t.TempDir()
		writeFile(t, filepath.Join(only, "gatehouse.pub"), oldPub)
		r := mustRun(t, exitFailure, "keygen", "--out", only)
		assertContains(t, "stderr", r.stderr, "gatehouse.pub already exists", "refusing to overwrite")
		if _, err := os.Stat(filepath.Join(only, "gatehouse.key")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a refused keygen wrote a private key (stat: %v)", err)
		}
	})

	t.Run("again with --force replaces both files", func(t *testing.T) {
		mustRun(t, exitOK, "keygen", "--out", dir, "--force")
		if bytes.Equal(readFile(t, keyPath), oldKey) || bytes.Equal(readFile(t, pubPath), oldPub) {
			t.Error("keygen --force did not replace the key pair")
		}
		fi, err := os.Stat(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("replaced private key mode = %04o, want 0600", got)
		}
	})

	t.Run("without --out is a usage error", func(t *testing.T) {
		r := mustRun(t, exitUsage, "keygen")
		assertContains(t, "stderr", r.stderr, "--out DIR is required")
	})
}

// --- 2. build, verify, tamper ------------------------------------------------

func TestBundleBuildThenVerifySucceeds(t *testing.T) {
	key, pub := keyPair(t)
	out := filepath.Join(t.TempDir(), "quickstart.bundle")
	r := mustRun(t, exitOK, "bundle", "build", quickstart, "--key", key, "--out", out, "--revision", "100")
	assertContains(t, "build stdout", r.stdout, "wrote "+out, "revision 100")
	assertContains(t, "build stderr", r.stderr, "tests: "+strconv.Itoa(countTests(t))+" passed")

	r = mustRun(t, exitOK, "bundle", "verify", out, "--trust", pub)
	if !strings.HasPrefix(r.stdout, "OK "+out+": revision 100,") {
		t.Errorf("verify stdout = %q, want it to start with %q", r.stdout, "OK "+out+": revision 100,")
	}
}

func TestBundleVerifyRefusesForeignKeyAndRollback(t *testing.T) {
	key, pub := keyPair(t)
	_, otherPub := keyPair(t)
	file := buildBundle(t, quickstart, key, "--revision", "100")

	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr []string
	}{
		{"signed by a key that is not trusted", []string{"--trust", otherPub}, exitFailure,
			[]string{"not trusted", bundle.KeyID(mustPub(t, pub))}},
		{"min-revision equal to the bundle's revision is a rollback", []string{"--trust", pub, "--min-revision", "100"}, exitFailure,
			[]string{"not newer", "revision 100"}},
		{"min-revision above the bundle's revision is a rollback", []string{"--trust", pub, "--min-revision", "101"}, exitFailure,
			[]string{"not newer", "revision 100", "101"}},
		{"min-revision one below the bundle's revision is accepted", []string{"--trust", pub, "--min-revision", "99"}, exitOK, nil},
		{"either of two trusted keys (rotation)", []string{"--trust", otherPub, "--trust", pub}, exitOK, nil},
		{"no --trust is a usage error", nil, exitUsage, []string{"at least one --trust PUB is required"}},
		{"unreadable trusted key is a usage error", []string{"--trust", filepath.Join(t.TempDir(), "missing.pub")}, exitUsage,
			[]string{"missing.pub"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRun(t, tc.wantCode, append([]string{"bundle", "verify", file}, tc.args...)...)
			assertContains(t, "stderr", r.stderr, tc.wantStderr...)
			if tc.wantCode == exitOK {
				if !strings.HasPrefix(r.stdout, "OK "+file+": revision 100,") {
					t.Errorf("stdout = %q, want an OK line for revision 100", r.stdout)
				}
			} else if strings.Contains(r.stdout, "OK") {
				t.Errorf("a refused bundle printed OK: %q", r.stdout)
			}
		})
	}
}

func mustPub(t testing.TB, path string) []byte {
	t.Helper()
	k, err := bundle.LoadPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// envelopeRegions locates the values of the envelope's payload, keyid and sig
// strings in the bundle file, as [start, end) byte offsets.
func envelopeRegions(t testing.TB, data []byte) (payload, keyID, sig [2]int) {
	t.Helper()
	var env bundle.Envelope
	if err := json.Unmarshal(data, &env); err != nil {
		t.Fatal(err)
	}
	find := func(field, value string) [2]int {
		needle := []byte(`"` + field + `":"` + value + `"`)
		if bytes.Count(data, needle) != 1 {
			t.Fatalf("field %s does not occur exactly once in the bundle", field)
		}
		start := bytes.Index(data, needle) + len(field) + 4
		return [2]int{start, start + len(value)}
	}
	return find("payload", env.Payload), find("keyid", env.Signatures[0].KeyID), find("sig", env.Signatures[0].Sig)
}

func TestBundleVerifyRefusesEverySingleByteFlip(t *testing.T) {
	key, pub := keyPair(t)
	file := buildBundle(t, quickstart, key, "--revision", "100")
	orig := readFile(t, file)
	kr, err := bundle.LoadKeyring(pub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Verify(orig, kr, bundle.VerifyOptions{}); err != nil {
		t.Fatalf("the untouched bundle does not verify: %v", err)
	}
	payload, keyID, sig := envelopeRegions(t, orig)
	in := func(i int, r [2]int) bool { return i >= r[0] && i < r[1] }

	// Exhaustive: every byte position, through bundle.Verify (the code the
	// CLI calls), with the class of error each region must produce.
	t.Run("every position via bundle.Verify", func(t *testing.T) {
		data := bytes.Clone(orig)
		failures := 0
		for i := range data {
			data[i] ^= 0x01
			_, err := bundle.Verify(data, kr, bundle.VerifyOptions{})
			data[i] ^= 0x01

			var region string
			var want []error
			switch {
			case in(i, keyID):
				region, want = "keyid", []error{bundle.ErrUnknownKey}
			case in(i, sig):
				region, want = "sig", []error{bundle.ErrBadSignature}
			case in(i, payload):
				// a flip to a non-base64 byte is malformed; any other flip changes the signed bytes
				region, want = "payload", []error{bundle.ErrBadSignature, bundle.ErrMalformed}
			default:
				region, want = "envelope structure", []error{bundle.ErrMalformed}
			}
			ok := err != nil && containsAny(err.Error(), tamperReasons)
			if ok {
				ok = false
				for _, w := range want {
					ok = ok || errors.Is(err, w)
				}
			}
			if !ok {
				failures++
				if failures <= 10 {
					t.Errorf("byte %d (%s, %q -> %q): Verify returned %v, want an error wrapping one of %v",
						i, region, orig[i], orig[i]^0x01, err, want)
				}
			}
		}
		if failures > 10 {
			t.Errorf("... %d flipped bundles in all were not refused as expected", failures)
		}
	})

	// A sample of ~50 positions spread over the file, including the first and
	// last bytes and every region, through the CLI itself.
	t.Run("sampled positions via the CLI", func(t *testing.T) {
		positions := map[int]bool{0: true, len(orig) - 1: true, len(orig) - 2: true,
			payload[0]: true, payload[1] - 1: true, keyID[0]: true, keyID[1] - 1: true, sig[0]: true, sig[1] - 1: true}
		for i := 0; len(positions) < 50; i++ {
			positions[(i*len(orig))/43] = true
		}
		tampered := filepath.Join(t.TempDir(), "tampered.bundle")
		for i := range positions {
			data := bytes.Clone(orig)
			data[i] ^= 0x01
			writeFile(t, tampered, data)
			r := gatehouse(t, "bundle", "verify", tampered, "--trust", pub)
			if r.code != exitFailure {
				t.Errorf("byte %d flipped: want exit 1, got %s", i, r)
				continue
			}
			if !strings.HasPrefix(r.stderr, "gatehouse: "+tampered+": ") || !containsAny(r.stderr, tamperReasons) {
				t.Errorf("byte %d flipped: stderr does not say why (want one of %q): %q", i, tamperReasons, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("byte %d flipped: stdout should be empty, got %q", i, r.stdout)
			}
		}
	})
}

// --- 3. reproducible builds --------------------------------------------------

func TestBundleBuildIsReproducible(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", sourceDateEpoch)
	key, _ := keyPair(t)

	a := readFile(t, buildBundle(t, quickstart, key, "--revision", "42"))
	b := readFile(t, buildBundle(t, quickstart, key, "--revision", "42"))
	if !bytes.Equal(a, b) {
		t.Errorf("two builds with the same SOURCE_DATE_EPOCH and --revision differ at byte %d", firstDifference(a, b))
	}

	t.Run("the same policy in a different directory gives the same bytes", func(t *testing.T) {
		c := readFile(t, buildBundle(t, copyQuickstart(t), key, "--revision", "42"))
		if !bytes.Equal(a, c) {
			t.Errorf("a copy of the policy built to different bytes (first difference at %d)", firstDifference(a, c))
		}
	})

	t.Run("a different --revision gives different bytes", func(t *testing.T) {
		c := readFile(t, buildBundle(t, quickstart, key, "--revision", "43"))
		if bytes.Equal(a, c) {
			t.Error("builds with --revision 42 and 43 are byte-identical")
		}
		p, _, err := bundle.ReadUnverified(c)
		if err != nil {
			t.Fatal(err)
		}
		if p.Revision != 43 {
			t.Errorf("revision = %d, want 43", p.Revision)
		}
	})

	t.Run("without --revision the revision is SOURCE_DATE_EPOCH", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "p.bundle")
		r := mustRun(t, exitOK, "bundle", "build", quickstart, "--key", key, "--out", out)
		assertContains(t, "build stdout", r.stdout, "revision "+sourceDateEpoch+",")
		p, _, err := bundle.ReadUnverified(readFile(t, out))
		if err != nil {
			t.Fatal(err)
		}
		if strconv.FormatUint(p.Revision, 10) != sourceDateEpoch {
			t.Errorf("revision = %d, want SOURCE_DATE_EPOCH %s", p.Revision, sourceDateEpoch)
		}
		if p.CreatedAt != "2025-11-24T16:00:00Z" {
			t.Errorf("created_at = %q, want 2025-11-24T16:00:00Z", p.CreatedAt)
		}
		again := readFile(t, buildBundle(t, quickstart, key))
		if !bytes.Equal(readFile(t, out), again) {
			t.Error("two builds without --revision under the same SOURCE_DATE_EPOCH differ")
		}
	})
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// --- 4. CEL type errors point at the typo -------------------------------------

// linecol returns the 1-based line and column (in characters) of byte offset
// off in src.
func linecol(src []byte, off int) (line, col int) {
	line = 1 + bytes.Count(src[:off], []byte("\n"))
	lineStart := bytes.LastIndexByte(src[:off], '\n') + 1
	return line, utf8.RuneCount(src[lineStart:off]) + 1
}

func TestCELTypoFailsBuildAndCheckWithExactPosition(t *testing.T) {
	dir := copyQuickstart(t)
	masks := filepath.Join(dir, "masks.hcl")
	replaceOnce(t, masks, "'pci' in identity.groups", "'pci' in identity.grups")
	src := readFile(t, masks)
	off := bytes.Index(src, []byte("identity.grups")) + len("identity.")
	line, col := linecol(src, off)
	position := fmt.Sprintf("masks.hcl:%d:%d", line, col)
	key, _ := keyPair(t)
	out := filepath.Join(t.TempDir(), "typo.bundle")

	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"bundle build", []string{"bundle", "build", dir, "--key", key, "--out", out}, "1 error(s) in the policy; not signing"},
		{"check", []string{"check", dir}, dir + ": 1 error(s) in the policy"},
		{"eval", []string{"eval", dir, "--identity", "billing-service", "--resource", "orders", "--sql", "SELECT 1"}, dir + ": 1 error(s) in the policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRun(t, exitFailure, tc.args...)
			assertContains(t, "stderr", r.stderr, "undefined field 'grups'", position, tc.wantStderr)
			// The position and the message are one diagnostic line.
			assertContains(t, "stderr", r.stderr, position+": error: CEL type error: undefined field 'grups'")
		})
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bundle build wrote %s for a policy with a type error (stat: %v)", out, err)
	}
}

// --- 5. check ----------------------------------------------------------------

func TestCheckQuickstartPassesEveryTest(t *testing.T) {
	n := countTests(t)
	r := mustRun(t, exitOK, "check", quickstart)
	lines := strings.Split(strings.TrimRight(r.stdout, "\n"), "\n")
	var results []string
	for _, l := range lines {
		if l == "" {
			break // the summary follows a blank line
		}
		results = append(results, l)
	}
	if len(results) != n {
		t.Errorf("check printed %d result lines, want %d:\n%s", len(results), n, r.stdout)
	}
	for _, l := range results {
		if !strings.HasPrefix(l, "PASS  ") {
			t.Errorf("result line is not a PASS: %q", l)
		}
	}
	if summary := lines[len(results)+1]; !strings.HasPrefix(summary, fmt.Sprintf("%d passed, 0 failed (", n)) {
		t.Errorf("summary = %q, want %d passed, 0 failed", summary, n)
	}
	// Every rule and mask of the quickstart is exercised by a test.
	if cov := lines[len(lines)-1]; !regexp.MustCompile(`^coverage: (\d+) of (\d+) rules and 3 of 3 masks exercised by a test$`).MatchString(cov) ||
		strings.Contains(r.stdout, "untested") {
		t.Errorf("coverage line = %q", cov)
	}
	if r.stderr != "" {
		t.Errorf("stderr = %q, want empty", r.stderr)
	}
}

// JUnit XML as CI systems read it.
type junitDoc struct {
	XMLName  xml.Name `xml:"testsuites"`
	Tests    int      `xml:"tests,attr"`
	Failures int      `xml:"failures,attr"`
	Suites   []struct {
		Name     string `xml:"name,attr"`
		Tests    int    `xml:"tests,attr"`
		Failures int    `xml:"failures,attr"`
		Cases    []struct {
			Name    string `xml:"name,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Type    string `xml:"type,attr"`
				Body    string `xml:",chardata"`
			} `xml:"failure"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

type checkJSON struct {
	Source string `json:"source"`
	Passed *int   `json:"passed"`
	Failed *int   `json:"failed"`
	Tests  []struct {
		Name     string   `json:"name"`
		Passed   bool     `json:"passed"`
		Expected string   `json:"expected"`
		Failures []string `json:"failures"`
		Decision struct {
			Effect       string `json:"effect"`
			MatchedRules []struct {
				Rule string `json:"rule"`
			} `json:"matched_rules"`
		} `json:"decision"`
	} `json:"tests"`
}

func TestCheckReportsAChangedExpectation(t *testing.T) {
	n := countTests(t)
	dir := copyQuickstart(t)
	tests := filepath.Join(dir, "tests.hcl")
	// Flip the expectation of the test "nobody may drop" only.
	src := string(readFile(t, tests))
	start := strings.Index(src, `test "nobody may drop" {`)
	if start < 0 {
		t.Fatal(`tests.hcl has no test "nobody may drop"`)
	}
	end := start + strings.Index(src[start:], "\n}")
	block := src[start:end]
	if strings.Count(block, `expect       = "deny"`) != 1 {
		t.Fatalf("test \"nobody may drop\" does not expect deny:\n%s", block)
	}
	writeFile(t, tests, []byte(src[:start]+strings.Replace(block, `expect       = "deny"`, `expect       = "allow"`, 1)+src[end:]))

	t.Run("text", func(t *testing.T) {
		r := mustRun(t, exitFailure, "check", dir)
		var failLines []string
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, "FAIL") {
				failLines = append(failLines, l)
			}
		}
		if len(failLines) != 1 || !strings.HasPrefix(failLines[0], "FAIL  nobody may drop ") {
			t.Errorf("want exactly one FAIL line, for \"nobody may drop\"; got %q", failLines)
		} else {
			assertContains(t, "FAIL line", failLines[0], "deny", "guardrails/no-drop-or-truncate")
		}
		assertContains(t, "stdout", r.stdout,
			"expected allow, got deny",
			"matched: guardrails/no-drop-or-truncate (deny): ",
			"matched: dba/administer (allow): ",
			fmt.Sprintf("%d passed, 1 failed", n-1))
	})

	t.Run("junit", func(t *testing.T) {
		r := mustRun(t, exitFailure, "check", dir, "--format", "junit")
		var doc junitDoc
		if err := xml.Unmarshal([]byte(r.stdout), &doc); err != nil {
			t.Fatalf("junit output does not parse: %v\n%s", err, r.stdout)
		}
		if doc.Tests != n || doc.Failures != 1 {
			t.Errorf("<testsuites tests=%d failures=%d>, want tests=%d failures=1", doc.Tests, doc.Failures, n)
		}
		if len(doc.Suites) != 1 {
			t.Fatalf("%d <testsuite> elements, want 1", len(doc.Suites))
		}
		s := doc.Suites[0]
		if s.Tests != n || s.Failures != 1 || len(s.Cases) != n {
			t.Errorf("<testsuite tests=%d failures=%d> with %d <testcase>, want %d, 1, %d", s.Tests, s.Failures, len(s.Cases), n, n)
		}
		var failed []string
		for _, c := range s.Cases {
			if c.Failure == nil {
				continue
			}
			failed = append(failed, c.Name)
			assertContains(t, "<failure message>", c.Failure.Message, "expected allow, got deny")
			assertContains(t, "<failure> body", c.Failure.Body, "decision: deny", "guardrails/no-drop-or-truncate")
		}
		if len(failed) != 1 || failed[0] != "nobody may drop" {
			t.Errorf("testcases with <failure>: %q, want [\"nobody may drop\"]", failed)
		}
	})

	t.Run("json", func(t *testing.T) {
		r := mustRun(t, exitFailure, "check", dir, "--format", "json")
		var doc checkJSON
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
			t.Fatalf("json output does not parse: %v\n%s", err, r.stdout)
		}
		if doc.Passed == nil || doc.Failed == nil || *doc.Passed != n-1 || *doc.Failed != 1 {
			t.Fatalf("passed/failed = %v/%v, want %d/1", doc.Passed, doc.Failed, n-1)
		}
		if len(doc.Tests) != n {
			t.Errorf("%d tests, want %d", len(doc.Tests), n)
		}
		for _, tr := range doc.Tests {
			if tr.Name != "nobody may drop" {
				if !tr.Passed {
					t.Errorf("test %q failed: %v", tr.Name, tr.Failures)
				}
				continue
			}
			if tr.Passed || tr.Expected != "allow" || tr.Decision.Effect != "deny" {
				t.Errorf("nobody may drop: passed=%t expected=%q effect=%q, want false, allow, deny", tr.Passed, tr.Expected, tr.Decision.Effect)
			}
			assertContains(t, "failures", strings.Join(tr.Failures, "\n"), "expected allow, got deny")
			var rules []string
			for _, m := range tr.Decision.MatchedRules {
				rules = append(rules, m.Rule)
			}
			assertContains(t, "matched rules", strings.Join(rules, ","), "guardrails/no-drop-or-truncate")
		}
	})

	t.Run("bundle build refuses to sign", func(t *testing.T) {
		key, _ := keyPair(t)
		out := filepath.Join(t.TempDir(), "p.bundle")
		r := mustRun(t, exitFailure, "bundle", "build", dir, "--key", key, "--out", out)
		assertContains(t, "stderr", r.stderr, "FAIL  nobody may drop", "expected allow, got deny",
			fmt.Sprintf("1 of %d policy test(s) failed; not signing", n))
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a bundle was written although a test failed (stat: %v)", err)
		}
		mustRun(t, exitOK, "bundle", "build", dir, "--key", key, "--out", out, "--skip-tests")
	})
}

func TestCheckFormatsOnThePassingQuickstart(t *testing.T) {
	n := countTests(t)
	r := mustRun(t, exitOK, "check", quickstart, "--format", "junit")
	var doc junitDoc
	if err := xml.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("junit output does not parse: %v", err)
	}
	if doc.Tests != n || doc.Failures != 0 || len(doc.Suites) != 1 || len(doc.Suites[0].Cases) != n {
		t.Errorf("junit: tests=%d failures=%d, want %d and 0", doc.Tests, doc.Failures, n)
	}
	r = mustRun(t, exitOK, "check", quickstart, "--format", "json")
	var js checkJSON
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil {
		t.Fatalf("json output does not parse: %v", err)
	}
	if js.Passed == nil || js.Failed == nil || *js.Passed != n || *js.Failed != 0 {
		t.Errorf("json: passed/failed = %v/%v, want %d/0", js.Passed, js.Failed, n)
	}
	r = mustRun(t, exitUsage, "check", quickstart, "--format", "yaml")
	assertContains(t, "stderr", r.stderr, `--format must be text, json or junit, not "yaml"`)
}

func TestCheckVerifiedBundle(t *testing.T) {
	key, pub := keyPair(t)
	_, otherPub := keyPair(t)
	file := buildBundle(t, quickstart, key, "--revision", "7")
	r := mustRun(t, exitOK, "check", file, "--trust", pub)
	assertContains(t, "stdout", r.stdout, fmt.Sprintf("%d passed, 0 failed", countTests(t)))
	r = mustRun(t, exitFailure, "check", file, "--trust", otherPub)
	assertContains(t, "stderr", r.stderr, "not trusted")
}

// --- 6. diff -----------------------------------------------------------------

type diffJSON struct {
	Objects []struct {
		Change string `json:"change"`
		Kind   string `json:"kind"`
		Name   string `json:"name"`
	} `json:"objects"`
	Access []struct {
		Caller   string   `json:"caller"`
		Resource string   `json:"resource"`
		Old      string   `json:"old"`
		New      string   `json:"new"`
		Summary  string   `json:"summary"`
		Requests []string `json:"requests"`
		Rules    []string `json:"rules"`
	} `json:"access"`
	Probes int `json:"probes"`
}

// widenedQuickstart copies the quickstart and lets analytics-read-only/read
// also INSERT into orders.
func widenedQuickstart(t testing.TB) string {
	t.Helper()
	dir := copyQuickstart(t)
	replaceOnce(t, filepath.Join(dir, "policies.hcl"),
		"['SELECT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&\n        s.tables.all(t, t.access == 'read')",
		"['SELECT', 'INSERT', 'EXPLAIN', 'SHOW', 'BEGIN', 'COMMIT', 'ROLLBACK'] &&\n        s.tables.all(t, t.access == 'read' || t.name == 'orders')")
	return dir
}

func assertWidenedText(t *testing.T, out string) {
	t.Helper()
	var gained string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "identity analytics-job") {
			gained = l
		}
	}
	if gained == "" {
		t.Fatalf("diff does not name identity analytics-job:\n%s", out)
	}
	assertContains(t, "access line", gained, "gained allow", `"orders"`, "deny -> allow", "analytics-read-only/read")
	assertContains(t, "diff", out, `policy "analytics-read-only" changed`, "rules[read].when")
	if !regexp.MustCompile(`(?m)^\s+INSERT INTO \S*orders`).MatchString(out) {
		t.Errorf("diff lists no INSERT request on orders:\n%s", out)
	}
}

func TestBundleDiffShowsWidenedAccess(t *testing.T) {
	widened := widenedQuickstart(t)

	t.Run("text", func(t *testing.T) {
		r := mustRun(t, exitOK, "bundle", "diff", quickstart, widened)
		assertWidenedText(t, r.stdout)
	})

	t.Run("json", func(t *testing.T) {
		r := mustRun(t, exitOK, "bundle", "diff", quickstart, widened, "--format", "json")
		var d diffJSON
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
			t.Fatalf("json diff does not parse: %v\n%s", err, r.stdout)
		}
		if len(d.Access) != 1 {
			t.Fatalf("%d access changes, want 1 (only analytics-job gains): %+v", len(d.Access), d.Access)
		}
		a := d.Access[0]
		if a.Caller != "identity analytics-job" || a.Resource != "orders" || a.Old != "deny" || a.New != "allow" || a.Summary != "gained allow" {
			t.Errorf("access change = %+v, want identity analytics-job on orders deny -> allow (gained allow)", a)
		}
		hasInsert := false
		for _, q := range a.Requests {
			hasInsert = hasInsert || strings.HasPrefix(q, "INSERT INTO ")
		}
		if !hasInsert {
			t.Errorf("no INSERT among the requests: %q", a.Requests)
		}
		if strings.Join(a.Rules, ",") != "analytics-read-only/read" {
			t.Errorf("rules = %q, want [analytics-read-only/read]", a.Rules)
		}
		if len(d.Objects) != 1 || d.Objects[0].Change != "changed" || d.Objects[0].Kind != "policy" || d.Objects[0].Name != "analytics-read-only" {
			t.Errorf("objects = %+v, want one changed policy analytics-read-only", d.Objects)
		}
	})

	t.Run("--exit-code exits 1 on a difference", func(t *testing.T) {
		r := mustRun(t, exitFailure, "bundle", "diff", quickstart, widened, "--exit-code")
		assertWidenedText(t, r.stdout)
	})

	t.Run("bundle against a directory", func(t *testing.T) {
		key, pub := keyPair(t)
		file := buildBundle(t, quickstart, key, "--revision", "5")
		r := mustRun(t, exitOK, "bundle", "diff", file, widened, "--trust", pub)
		assertWidenedText(t, r.stdout)
		if strings.Contains(r.stderr, "not verified") {
			t.Errorf("diff with --trust warned the bundle is not verified: %q", r.stderr)
		}

		r = mustRun(t, exitOK, "bundle", "diff", file, widened)
		assertWidenedText(t, r.stdout)
		assertContains(t, "stderr", r.stderr, "warning: "+file+": signature not verified")

		r = mustRun(t, exitOK, "bundle", "diff", file, quickstart, "--trust", pub, "--exit-code")
		assertContains(t, "stdout", r.stdout, "No changes")
	})

	t.Run("usage errors", func(t *testing.T) {
		r := mustRun(t, exitUsage, "bundle", "diff", quickstart, widened, "--format", "yaml")
		assertContains(t, "stderr", r.stderr, `--format must be text or json, not "yaml"`)
		r = mustRun(t, exitUsage, "bundle", "diff", quickstart, filepath.Join(t.TempDir(), "missing"))
		assertContains(t, "stderr", r.stderr, "missing")
		notBundle := filepath.Join(t.TempDir(), "notes.txt")
		writeFile(t, notBundle, []byte("hello\n"))
		r = mustRun(t, exitUsage, "bundle", "diff", quickstart, notBundle)
		assertContains(t, "stderr", r.stderr, "is neither a policy directory nor a Gatehouse bundle")
	})
}

// rearrangedQuickstart copies the quickstart with every file renamed, the
// top-level blocks of every file in reverse order, and two files merged.
func rearrangedQuickstart(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rearranged")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(quickstart, "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	var merged []byte
	for i, path := range files {
		f, diags := hclwrite.ParseConfig(readFile(t, path), path, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		blocks := f.Body().Blocks()
		if len(blocks) == 0 {
			t.Fatalf("%s has no blocks", path)
		}
		out := hclwrite.NewEmptyFile()
		for j := len(blocks) - 1; j >= 0; j-- {
			out.Body().AppendBlock(blocks[j])
			out.Body().AppendNewline()
		}
		b := hclwrite.Format(out.Bytes())
		switch filepath.Base(path) {
		case "masks.hcl", "identities.hcl":
			merged = append(append(b, '\n'), merged...)
		default:
			writeFile(t, filepath.Join(dir, fmt.Sprintf("%02d-%s", len(files)-i, strings.ToUpper(filepath.Base(path)[:1])+filepath.Base(path)[1:])), b)
		}
	}
	writeFile(t, filepath.Join(dir, "zz-merged.hcl"), merged)
	return dir
}

func TestBundleDiffReportsNoChangesForEquivalentPolicies(t *testing.T) {
	tests := []struct {
		name string
		new  func(testing.TB) string
	}{
		{"unchanged copy", copyQuickstart},
		{"files renamed, blocks reordered, files merged", rearrangedQuickstart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.new(t)
			mustRun(t, exitOK, "check", dir) // the rearranged copy is still a valid policy

			r := mustRun(t, exitOK, "bundle", "diff", quickstart, dir, "--exit-code")
			if !strings.HasPrefix(r.stdout, "No changes") {
				t.Errorf("diff of an equivalent policy reports changes:\n%s", r.stdout)
			}
			r = mustRun(t, exitOK, "bundle", "diff", quickstart, dir, "--format", "json")
			var d diffJSON
			if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
				t.Fatalf("json diff does not parse: %v", err)
			}
			if len(d.Objects) != 0 || len(d.Access) != 0 || d.Probes == 0 {
				t.Errorf("json diff: %d object and %d access changes over %d probes, want none over some probes", len(d.Objects), len(d.Access), d.Probes)
			}
		})
	}

	t.Run("rearranged policy builds to the same bundle", func(t *testing.T) {
		t.Setenv("SOURCE_DATE_EPOCH", sourceDateEpoch)
		key, _ := keyPair(t)
		a := readFile(t, buildBundle(t, quickstart, key, "--revision", "1"))
		b := readFile(t, buildBundle(t, rearrangedQuickstart(t), key, "--revision", "1"))
		if !bytes.Equal(a, b) {
			t.Errorf("rearranging files and blocks changed the bundle (first difference at byte %d)", firstDifference(a, b))
		}
	})
}

// --- 7. eval -----------------------------------------------------------------

type evalJSON struct {
	Effect       string `json:"effect"`
	MatchedRules []struct {
		Rule   string `json:"rule"`
		Effect string `json:"effect"`
		Reason string `json:"reason"`
	} `json:"matched_rules"`
	Reasons []string `json:"reasons"`
	Masks   []struct {
		Target string `json:"target"`
		Method string `json:"method"`
		Mask   string `json:"mask"`
	} `json:"masks"`
	Identity struct {
		Name string `json:"name"`
	} `json:"identity"`
	Resource string `json:"resource"`
}

func evalDecision(t *testing.T, args ...string) (evalJSON, map[string]json.RawMessage) {
	t.Helper()
	r := mustRun(t, exitOK, append(append([]string{"eval"}, args...), "--format", "json")...)
	var d evalJSON
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("eval json does not parse: %v\n%s", err, r.stdout)
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	return d, raw
}

func TestEvalExplainsDecisions(t *testing.T) {
	t.Run("DROP TABLE is denied by the guardrail", func(t *testing.T) {
		d, raw := evalDecision(t, quickstart, "--identity", "billing-service", "--resource", "orders", "--sql", "DROP TABLE orders")
		if d.Effect != "deny" {
			t.Errorf("effect = %q, want deny", d.Effect)
		}
		var rules []string
		for _, m := range d.MatchedRules {
			rules = append(rules, m.Rule)
		}
		if !containsAny(strings.Join(rules, "\n")+"\n", []string{"guardrails/no-drop-or-truncate\n"}) {
			t.Errorf("matched_rules = %q, want guardrails/no-drop-or-truncate among them", rules)
		}
		if len(d.Reasons) == 0 || !containsAny(strings.Join(d.Reasons, "\n"), []string{"DROP or TRUNCATE"}) {
			t.Errorf("reasons = %q, want the guardrail's reason", d.Reasons)
		}
		if m := strings.TrimSpace(string(raw["masks"])); !strings.HasPrefix(m, "[") {
			t.Errorf("masks = %s, want a JSON array", m)
		}
		if d.Identity.Name != "billing-service" || d.Resource != "orders" {
			t.Errorf("identity/resource = %q/%q, want billing-service/orders", d.Identity.Name, d.Resource)
		}
	})

	t.Run("an allowed SELECT on customers shows the masks", func(t *testing.T) {
		d, _ := evalDecision(t, quickstart, "--identity", "billing-service", "--resource", "orders",
			"--sql", "SELECT email, card_number FROM customers WHERE id = 7")
		if d.Effect != "allow" {
			t.Errorf("effect = %q, want allow", d.Effect)
		}
		masks := map[string]string{}
		for _, m := range d.Masks {
			masks[m.Target] = m.Method
		}
		if masks["public.customers.email"] != "partial" {
			t.Errorf("masks = %v, want public.customers.email partial", masks)
		}
		if masks["public.customers.card_number"] != "redact" {
			t.Errorf("masks = %v, want public.customers.card_number redact for a caller not in pci", masks)
		}
	})

	t.Run("a pci caller sees card numbers", func(t *testing.T) {
		d, _ := evalDecision(t, quickstart, "--identity", "billing-service", "--group", "pci", "--resource", "orders",
			"--sql", "SELECT email, card_number FROM customers WHERE id = 7")
		for _, m := range d.Masks {
			if m.Target == "public.customers.card_number" {
				t.Errorf("card_number is masked (%s) for a pci caller", m.Method)
			}
		}
	})

	t.Run("text output from a verified bundle", func(t *testing.T) {
		key, pub := keyPair(t)
		file := buildBundle(t, quickstart, key, "--revision", "9")
		r := mustRun(t, exitOK, "eval", file, "--trust", pub, "--identity", "billing-service", "--resource", "orders",
			"--sql", "/* tidy up */ DROP TABLE orders")
		assertContains(t, "stdout", r.stdout, "effect     DENY", "guardrails/no-drop-or-truncate (deny)", "1. DROP TABLE")
	})
}

func TestEvalUsageErrors(t *testing.T) {
	base := []string{"eval", quickstart, "--identity", "billing-service"}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"no --resource", []string{"--sql", "SELECT 1"}, exitUsage, "--resource is required"},
		{"both --sql and --request", []string{"--resource", "orders", "--sql", "SELECT 1", "--request", `{"kind":"connect"}`}, exitUsage, "give exactly one of --sql and --request"},
		{"neither --sql nor --request", []string{"--resource", "orders"}, exitUsage, "give exactly one of --sql and --request"},
		{"unknown format", []string{"--resource", "orders", "--sql", "SELECT 1", "--format", "yaml"}, exitUsage, `--format must be text or json, not "yaml"`},
		{"unknown flag", []string{"--resource", "orders", "--sql", "SELECT 1", "--bogus"}, exitUsage, "unknown flag: --bogus"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRun(t, tc.wantCode, append(append([]string{}, base...), tc.args...)...)
			assertContains(t, "stderr", r.stderr, tc.wantStderr, "Run 'gatehouse --help' for usage.")
			if r.stdout != "" {
				t.Errorf("stdout = %q, want empty", r.stdout)
			}
		})
	}
	t.Run("no caller", func(t *testing.T) {
		r := mustRun(t, exitUsage, "eval", quickstart, "--resource", "orders", "--sql", "SELECT 1")
		assertContains(t, "stderr", r.stderr, "name the caller")
	})
}

// --- 8. fmt ------------------------------------------------------------------

func TestFmtCheckAndFix(t *testing.T) {
	r := mustRun(t, exitOK, "fmt", "--check", quickstart)
	if r.stdout != "" {
		t.Errorf("fmt --check on the quickstart listed files: %q", r.stdout)
	}

	dir := copyQuickstart(t)
	masks := filepath.Join(dir, "masks.hcl")
	want := readFile(t, masks)
	replaceOnce(t, masks, `  method      = "partial"`, `      method = "partial"`)
	misformatted := readFile(t, masks)

	r = mustRun(t, exitFailure, "fmt", "--check", dir)
	if r.stdout != masks+"\n" {
		t.Errorf("fmt --check stdout = %q, want exactly %q", r.stdout, masks+"\n")
	}
	assertContains(t, "stderr", r.stderr, "1 file(s) need formatting; run: gatehouse fmt "+dir)
	if !bytes.Equal(readFile(t, masks), misformatted) {
		t.Error("fmt --check changed the file")
	}

	if err := os.Chmod(masks, 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustRun(t, exitOK, "fmt", dir)
	if fi, err := os.Stat(masks); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("fmt did not keep the file's mode 0600 (stat: %v, %v)", fi.Mode(), err)
	}
	if r.stdout != masks+"\n" {
		t.Errorf("fmt stdout = %q, want exactly %q", r.stdout, masks+"\n")
	}
	if got := readFile(t, masks); !bytes.Equal(got, want) {
		t.Errorf("fmt did not restore the canonical file:\n%s", got)
	}
	if r := mustRun(t, exitOK, "fmt", "--check", dir); r.stdout != "" {
		t.Errorf("fmt --check after fmt listed files: %q", r.stdout)
	}

	t.Run("a file that does not parse is not touched", func(t *testing.T) {
		broken := filepath.Join(dir, "broken.hcl")
		writeFile(t, broken, []byte("policy \"x\" {\n  resources = [\n"))
		for _, args := range [][]string{{"fmt", "--check", dir}, {"fmt", dir}} {
			r := mustRun(t, exitFailure, args...)
			assertContains(t, "stderr", r.stderr, "broken.hcl:")
		}
		if got := readFile(t, broken); string(got) != "policy \"x\" {\n  resources = [\n" {
			t.Errorf("fmt rewrote a file that does not parse: %q", got)
		}
	})

	t.Run("a missing directory is a usage error", func(t *testing.T) {
		mustRun(t, exitUsage, "fmt", filepath.Join(t.TempDir(), "missing"))
	})
}

// --- 9. inspect --------------------------------------------------------------

func TestBundleInspect(t *testing.T) {
	key, pub := keyPair(t)
	_, otherPub := keyPair(t)
	file := buildBundle(t, quickstart, key, "--revision", "314")

	t.Run("without --trust says NOT VERIFIED", func(t *testing.T) {
		r := mustRun(t, exitOK, "bundle", "inspect", file)
		assertContains(t, "stdout", r.stdout, "revision    314\n", "(NOT VERIFIED)", `policy            analytics-read-only`)
		assertContains(t, "stderr", r.stderr, "warning: "+file+": signature not verified")
	})

	t.Run("with --trust says verified", func(t *testing.T) {
		r := mustRun(t, exitOK, "bundle", "inspect", file, "--trust", pub)
		assertContains(t, "stdout", r.stdout, "revision    314\n", "(verified)")
		if strings.Contains(r.stdout, "NOT VERIFIED") || r.stderr != "" {
			t.Errorf("verified inspect still warns:\n%s", r)
		}
	})

	t.Run("with an untrusted key fails", func(t *testing.T) {
		r := mustRun(t, exitFailure, "bundle", "inspect", file, "--trust", otherPub)
		assertContains(t, "stderr", r.stderr, "not trusted")
	})

	t.Run("--json parses", func(t *testing.T) {
		for _, tc := range []struct {
			args         []string
			wantVerified bool
		}{{nil, false}, {[]string{"--trust", pub}, true}} {
			r := mustRun(t, exitOK, append([]string{"bundle", "inspect", file, "--json"}, tc.args...)...)
			var doc struct {
				File     string          `json:"file"`
				Verified bool            `json:"verified"`
				KeyID    string          `json:"key_id"`
				Digest   string          `json:"digest"`
				Payload  *bundle.Payload `json:"payload"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
				t.Fatalf("inspect --json does not parse: %v\n%s", err, r.stdout)
			}
			if doc.Verified != tc.wantVerified || doc.Payload == nil || doc.Payload.Revision != 314 ||
				doc.KeyID != bundle.KeyID(mustPub(t, pub)) || !strings.HasPrefix(doc.Digest, "sha256:") {
				t.Errorf("inspect --json %v: verified=%t key_id=%q digest=%q payload=%v", tc.args, doc.Verified, doc.KeyID, doc.Digest, doc.Payload != nil)
			}
		}
	})

	t.Run("a directory is a usage error", func(t *testing.T) {
		r := mustRun(t, exitUsage, "bundle", "inspect", quickstart)
		assertContains(t, "stderr", r.stderr, "inspect takes a bundle file")
	})
}

// --- 10. version and general usage --------------------------------------------

func TestVersion(t *testing.T) {
	r := mustRun(t, exitOK, "version")
	if !strings.HasPrefix(r.stdout, "gatehouse ") || !strings.HasSuffix(r.stdout, ")\n") {
		t.Errorf("version stdout = %q, want \"gatehouse VERSION (GO, OS/ARCH)\\n\"", r.stdout)
	}
	mustRun(t, exitUsage, "version", "extra")
}

func TestUsageErrorsExit2(t *testing.T) {
	key, _ := keyPair(t)
	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"bundle build without --key", []string{"bundle", "build", quickstart, "--out", filepath.Join(t.TempDir(), "x")}, "--key and --out are required"},
		{"bundle build without --out", []string{"bundle", "build", quickstart, "--key", key}, "--key and --out are required"},
		{"bundle build without DIR", []string{"bundle", "build", "--key", key, "--out", "x"}, "accepts 1 arg(s), received 0"},
		{"check without an argument", []string{"check"}, "accepts 1 arg(s), received 0"},
		{"check of a missing path", []string{"check", filepath.Join(t.TempDir(), "missing")}, "does not exist: give a policy directory (of *.hcl files) or a bundle file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRun(t, exitUsage, tc.args...)
			assertContains(t, "stderr", r.stderr, "gatehouse: ", tc.wantStderr)
		})
	}
}

func TestBundleBuildSigningKeyProblems(t *testing.T) {
	key, pub := keyPair(t)
	out := filepath.Join(t.TempDir(), "p.bundle")

	t.Run("a key readable by others is refused", func(t *testing.T) {
		loose := filepath.Join(t.TempDir(), "loose.key")
		writeFile(t, loose, readFile(t, key)) // mode 0644
		r := mustRun(t, exitFailure, "bundle", "build", quickstart, "--key", loose, "--out", out)
		assertContains(t, "stderr", r.stderr, "readable by other users (mode 0644)", "chmod 600 "+loose)
	})

	t.Run("a public key is not a signing key", func(t *testing.T) {
		notPriv := filepath.Join(t.TempDir(), "gatehouse.pub")
		writeFile(t, notPriv, readFile(t, pub))
		if err := os.Chmod(notPriv, 0o600); err != nil {
			t.Fatal(err)
		}
		r := gatehouse(t, "bundle", "build", quickstart, "--key", notPriv, "--out", out)
		if r.code == exitOK {
			t.Fatalf("build signed with a public key file:\n%s", r)
		}
		assertContains(t, "stderr", r.stderr, "PUBLIC KEY", notPriv)
	})

	t.Run("a missing key file is a usage error", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "missing.key")
		r := mustRun(t, exitUsage, "bundle", "build", quickstart, "--key", missing, "--out", out)
		assertContains(t, "stderr", r.stderr, "missing.key", "no such file or directory")
	})

	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bundle was written although the signing key was refused (stat: %v)", err)
	}
}

// TestFmtRefusesDeepNesting: gatehouse fmt must not hand HCL's parser a file
// nested deep enough to overflow the stack (a fatal error, not a panic).
func TestFmtRefusesDeepNesting(t *testing.T) {
	dir := t.TempDir()
	src := "x = " + strings.Repeat("[", 200000) + strings.Repeat("]", 200000) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "deep.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustRun(t, exitFailure, "fmt", "--check", dir)
	assertContains(t, "stderr", r.stderr, "Nesting too deep")
	if len(r.stderr) > 4096 {
		t.Errorf("diagnostic is %d bytes: the snippet should be cut", len(r.stderr))
	}
}

func TestVerifyOfADirectoryIsAUsageError(t *testing.T) {
	pub := filepath.Join(t.TempDir(), "k")
	mustRun(t, exitOK, "keygen", "--out", pub)
	r := mustRun(t, exitUsage, "bundle", "verify", quickstart, "--trust", filepath.Join(pub, "gatehouse.pub"))
	assertContains(t, "stderr", r.stderr, "is a directory")
}

// TestTokenPart: the askpass answers each of the gateway's prompts with the
// part it asks for, so a token longer than OpenSSH's 1023-byte prompts
// arrives whole.
func TestTokenPart(t *testing.T) {
	token := strings.Repeat("a", 1000) + strings.Repeat("b", 1000) + "ccc"
	if got := tokenPart(token, "Access token: "); got != strings.Repeat("a", 1000) {
		t.Errorf("part 1: %d bytes", len(got))
	}
	if got := tokenPart(token, "Access token, part 2: "); got != strings.Repeat("b", 1000) {
		t.Errorf("part 2: %q", got[:10])
	}
	if got := tokenPart(token, "Access token, part 3: "); got != "ccc" {
		t.Errorf("part 3: %q", got)
	}
	if got := tokenPart(strings.Repeat("x", 2000), "Access token, part 3: "); got != "" {
		t.Errorf("past the end: %q", got)
	}
	if got := tokenPart("short", "bastion@gw's password: "); got != "short" {
		t.Errorf("password prompt: %q", got)
	}
}

// An --identity that does not resolve says what the identity matches and
// gives flags that do, from a test that names it.
func TestEvalExplainsIdentityResolution(t *testing.T) {
	r := mustRun(t, exitFailure, "eval", quickstart, "--identity", "analytics-job", "--resource", "orders", "--sql", "SELECT 1")
	assertContains(t, "stderr", r.stderr, `identity "analytics-job" matches tokens of provider "corp" where:`,
		"identity.subject.startsWith('analytics-') && identity.claims.?env.orValue('') == 'prod'",
		`--identity analytics-job --subject analytics-7f9c --claims '{"env":"prod"}'`)
	// The flags it gives work.
	mustRun(t, exitOK, "eval", quickstart, "--identity", "analytics-job", "--subject", "analytics-7f9c", "--claims", `{"env":"prod"}`,
		"--resource", "orders", "--sql", "SELECT 1")
	r = mustRun(t, exitFailure, "eval", quickstart, "--identity", "billing-service", "--subject", "nope", "--resource", "orders", "--sql", "SELECT 1")
	assertContains(t, "stderr", r.stderr, `identity "billing-service" is the subject "billing-service" of provider "corp": give --subject billing-service`)
}

// check --run runs only the tests whose name matches; a pattern that
// matches none is a usage error, and a missing path says what it wants.
func TestCheckRunFilterAndMissingPath(t *testing.T) {
	r := mustRun(t, exitOK, "check", quickstart, "--run", "^analytics")
	if strings.Contains(r.stdout, "billing") || !strings.Contains(r.stdout, "PASS  analytics") || strings.Contains(r.stdout, "coverage:") {
		t.Errorf("check --run ^analytics:\n%s", r.stdout)
	}
	r = mustRun(t, exitUsage, "check", quickstart, "--run", "no test is called this")
	assertContains(t, "stderr", r.stderr, `--run "no test is called this" matches no test`)
	r = mustRun(t, exitUsage, "bundle", "diff", quickstart, "my-changed-policies/")
	assertContains(t, "stderr", r.stderr, "my-changed-policies/ does not exist: give a policy directory (of *.hcl files) or a bundle file")
}

// One output flag: --format text|json everywhere; the older --json stays
// as an alias; a wrong value is a usage error that names the choices.
func TestFormatFlagEverywhere(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	mustRun(t, exitOK, "keygen", "--out", key)
	file := filepath.Join(dir, "q.bundle")
	mustRun(t, exitOK, "bundle", "build", quickstart, "--key", filepath.Join(key, "gatehouse.key"), "--out", file)
	// (audit verify's are in TestAuditVerify*, on real recordings.)
	if err := os.MkdirAll(filepath.Join(dir, "recordings"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"bundle", "inspect", file}, {"sessions", "list", "--data-dir", dir}} {
		for _, flag := range [][]string{{"--format", "json"}, {"--json"}} {
			r := gatehouse(t, append(args, flag...)...)
			var v any
			if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
				t.Errorf("%v %v: not JSON (%v): %s", args, flag, err, r)
			}
		}
		r := mustRun(t, exitUsage, append(args, "--format", "yaml")...)
		assertContains(t, "stderr", r.stderr, `--format must be text or json, not "yaml"`)
	}
}

// Every command a user runs shows examples in its --help.
func TestEveryCommandHasExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && !c.Hidden && c.Example == "" && c.Name() != "help" && c.Name() != "completion" && c.Parent() != nil && c.Parent().Name() != "completion" {
			t.Errorf("%s has no Example in its --help", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot(io.Discard, io.Discard))
}

// A failing test names its block's file and line, as go test does.
func TestCheckFailureNamesFileAndLine(t *testing.T) {
	dir := t.TempDir()
	entries, _ := os.ReadDir(quickstart)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(quickstart, e.Name()))
		if e.Name() == "policies.hcl" {
			b = []byte(strings.Replace(string(b), "t.access == 'read')", "t.access == 'read' && t.name != 'customers')", 1))
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := mustRun(t, exitFailure, "check", dir)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(filepath.Join(dir, "tests.hcl")) + `:\d+: test "analytics reads orders and customers" failed$`).MatchString(r.stdout) {
		t.Errorf("no file:line for the failing test:\n%s", r.stdout)
	}
}

// One --since for sessions list, impact and traffic export: days,
// durations, RFC 3339; anything else is a usage error.
func TestSinceTime(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"14d":                  now.Add(-14 * 24 * time.Hour),
		"36h":                  now.Add(-36 * time.Hour),
		"90m":                  now.Add(-90 * time.Minute),
		"2026-12-01T00:00:00Z": time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
	} {
		if got, err := sinceTime(in, now); err != nil || !got.Equal(want) {
			t.Errorf("sinceTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"0d", "-3h", "d", "1.5d", "yesterday"} {
		if _, err := sinceTime(bad, now); err == nil {
			t.Errorf("sinceTime(%q) accepted", bad)
		}
	}
	r := mustRun(t, exitUsage, "sessions", "list", "--data-dir", t.TempDir(), "--since", "yesterday")
	assertContains(t, "stderr", r.stderr, `--since "yesterday": want days (14d), a duration (36h, 90m) or an RFC 3339 time`)
}
