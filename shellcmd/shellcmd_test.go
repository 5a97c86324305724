package shellcmd

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestAnalyze(t *testing.T) {
	tests := map[string]struct {
		argv   []string
		simple bool
		err    bool
	}{
		"uptime":                 {[]string{"uptime"}, true, false},
		"df -h":                  {[]string{"df", "-h"}, true, false},
		"  ls   -l  /tmp ":       {[]string{"ls", "-l", "/tmp"}, true, false},
		`echo 'a b' "c d" e\ f`:  {[]string{"echo", "a b", "c d", "e f"}, true, false},
		`echo "a\"b" 'x\y'`:      {[]string{"echo", `a"b`, `x\y`}, true, false},
		"uptime; rm -rf /":       {nil, false, false},
		"uptime && rm -rf /":     {nil, false, false},
		"uptime | sh":            {nil, false, false},
		"ls $(rm -rf /)":         {nil, false, false},
		"ls `rm -rf /`":          {nil, false, false},
		"ls $HOME":               {nil, false, false},
		`ls "$HOME"`:             {nil, false, false},
		"ls *":                   {nil, false, false},
		"ls ~":                   {nil, false, false},
		"dd if=~root/key":        {nil, false, false},
		"echo PATH=/bin:~/bin":   {nil, false, false},
		`echo a"b"~c`:            {nil, false, false},
		`echo 'a=~' b~c`:         {[]string{"echo", "a=~", "b~c"}, true, false},
		"uptime > /etc/passwd":   {nil, false, false},
		"FOO=1 uptime":           {nil, false, false},
		"uptime &":               {nil, false, false},
		"! uptime":               {nil, false, false},
		"(uptime)":               {nil, false, false},
		"uptime\nrm -rf /":       {nil, false, false},
		"echo $'\\x41'":          {nil, false, false},
		"if true; then ls; fi":   {nil, false, false},
		"":                       {nil, false, false},
		"echo 'unterminated":     {nil, false, true},
		"echo \x00":              {nil, false, true},
		"for":                    {nil, false, true},
		"rm -rf ./build":         {[]string{"rm", "-rf", "./build"}, true, false},
		`printf '%s\n' "a\$b"`:   {[]string{"printf", `%s\n`, "a$b"}, true, false},
		"ls \\\n-l":              {[]string{"ls", "-l"}, true, false},
		"uptime # comment":       {[]string{"uptime"}, true, false},
		"uptime # c\nrm -rf /":   {nil, false, false},
		"echo {a,b}":             {nil, false, false},
		"echo a=b":               {[]string{"echo", "a=b"}, true, false},
		"sudo -u root id":        {[]string{"sudo", "-u", "root", "id"}, true, false},
		"ls -- '-rf'":            {[]string{"ls", "--", "-rf"}, true, false},
		`ls "$(id)"`:             {nil, false, false},
		"ls <(id)":               {nil, false, false},
		"ls ${HOME}":             {nil, false, false},
		"ls $((1+1))":            {nil, false, false},
		"ls [ab]":                {nil, false, false},
		"ls ?":                   {nil, false, false},
		"exec rm -rf /":          {[]string{"exec", "rm", "-rf", "/"}, true, false},
		"a\\;b":                  {[]string{"a;b"}, true, false},
		"ls 2>&1":                {nil, false, false},
		"true || rm -rf /":       {nil, false, false},
		"{ uptime; }":            {nil, false, false},
		"time uptime":            {nil, false, false},
		"coproc uptime":          {nil, false, false},
		"echo \"a`id`\"":         {nil, false, false},
		"echo 'a'\"b\"c":         {[]string{"echo", "abc"}, true, false},
		"echo \"\\x\"":           {[]string{"echo", `\x`}, true, false},
		"echo \"a\\\nb\"":        {[]string{"echo", "ab"}, true, false},
		"/usr/bin/uptime":        {[]string{"/usr/bin/uptime"}, true, false},
		"./deploy.sh --dry-run":  {[]string{"./deploy.sh", "--dry-run"}, true, false},
		"scp -t /tmp":            {[]string{"scp", "-t", "/tmp"}, true, false},
		"case x in x) id;; esac": {nil, false, false},
		"function f { id; }":     {nil, false, false},
		"[[ -e /etc ]]":          {nil, false, false},
		`echo a\$b`:              {nil, false, false}, // an escaped special is not trusted either
	}
	for cmd, tc := range tests {
		f, err := Analyze(cmd)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v, want error %v", cmd, err, tc.err)
			continue
		}
		if f.Simple != tc.simple || !slices.Equal(f.Argv, tc.argv) {
			t.Errorf("%q: %q simple %v, want %q simple %v", cmd, f.Argv, f.Simple, tc.argv, tc.simple)
		}
	}
}

// TestAgreesWithTheShell: for simple commands, the words are exactly what
// a real POSIX shell (dash, /bin/sh) passes to the program.
func TestAgreesWithTheShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no /bin/sh")
	}
	for _, cmd := range []string{`printf '%s\n' a 'b c' "d\"e" f\ g 'h\i' "j\\k" "l\$m" x\\y`, "printf '%s\\n' -- -rf", `printf '%s\n' "a\` + "\n" + `b"`} {
		f, err := Analyze(cmd)
		if err != nil || !f.Simple {
			t.Fatalf("%q: %+v %v", cmd, f, err)
		}
		out, err := exec.Command(sh, "-c", cmd).Output()
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if want := f.Argv[2:]; !slices.Equal(got, want) {
			t.Errorf("%q: the shell passes %q, Analyze says %q", cmd, got, want)
		}
	}
}
