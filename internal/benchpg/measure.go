package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatehouse-dev/gatehouse/internal/benchmem"
)

// transactions reads "number of transactions actually processed: 1234".
func transactions(out string) int64 {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "number of transactions actually processed: "); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}

// cpuMeter reads a proxy's CPU time so far: this process's (the gateway
// runs in it) when p is nil, else p's from /proc/PID/stat (utime and
// stime, in clock ticks of 10 ms; a run has thousands of them).
func cpuMeter(p *os.Process) func() time.Duration {
	if p == nil {
		return func() time.Duration {
			var ru syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid))
		if err != nil {
			return 0
		}
		// Fields after the command (which is in parentheses and may
		// hold spaces): state is field 3, utime 14, stime 15.
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			return 0
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(ut+st) * 10 * time.Millisecond
	}
}

// holdSessions is the child: it opens n sessions through the gateway
// (TLS, the token as password; each one authenticated and connected
// upstream), runs one query on each, says "ready", and keeps them idle
// until stdin closes.
func holdSessions(addr, tokenFile, caFile string, n int) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close(ctx)
		}
	}()
	return benchmem.Hold(func() error {
		for i := range n {
			cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=bench-client dbname=bench sslmode=verify-full sslrootcert=%s", host, port, caFile))
			if err != nil {
				return err
			}
			cfg.Password = strings.TrimSpace(string(token))
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				return fmt.Errorf("session %d: %w", i+1, err)
			}
			conns = append(conns, c)
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				return fmt.Errorf("session %d: %w", i+1, err)
			}
		}
		return nil
	})
}

// checkMasked makes sure the masked path measures masking: a prepared
// read of abalance through the gateway as p's caller must not return the
// value PostgreSQL holds (want).
func checkMasked(p path, caFile string, want int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=verify-full sslrootcert=%s", p.host, p.port, p.user, p.db, caFile))
	if err != nil {
		return err
	}
	cfg.Password = p.password
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	// pgbench -S's own statement, prepared as pgbench -M prepared does.
	var got any
	if err := c.QueryRow(ctx, "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 1).Scan(&got); err != nil {
		return err
	}
	if fmt.Sprint(got) == strconv.FormatInt(want, 10) {
		return fmt.Errorf("%s read abalance %v, unmasked", p.name, got)
	}
	return nil
}
