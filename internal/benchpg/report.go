package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// tpsRE reads "tps = 1234.5 (without initial connection time)".
func tpsRE(out string) float64 {
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "tps = "); ok {
			f, _ := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			return f
		}
	}
	return 0
}

// readLatencies reads every per-transaction log pgbench wrote (one per
// thread): "client_id transaction_no time_us script_no epoch epoch_us".
func readLatencies(dir string) ([]time.Duration, error) {
	files, _ := filepath.Glob(filepath.Join(dir, "tx.*"))
	if len(files) == 0 {
		return nil, fmt.Errorf("pgbench wrote no transaction log in %s", dir)
	}
	var lat []time.Duration
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				fh.Close()
				return nil, fmt.Errorf("%s: %q: %v", f, sc.Text(), err)
			}
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		fh.Close()
	}
	slices.Sort(lat)
	return lat, nil
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q * float64(len(sorted)-1))
	return sorted[i]
}

func formatReport(rs []result, clients []int, d time.Duration, scale int) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "pgbench -S (scale %d), %s per run, TLS on every client connection, on %s (%d CPUs)\n\n", scale, d, host, numCPU())
	fmt.Fprintf(&b, "| protocol | clients | path | TPS | vs direct | p50 ms | p99 ms | proxy CPU per tx | events per fdatasync |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	direct := map[string]result{}
	for _, r := range rs {
		if r.path == "direct" {
			direct[r.mode+strconv.Itoa(r.clients)] = r
		}
	}
	for _, r := range rs {
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | %d | %s | failed: %s | | | | | |\n", r.mode, r.clients, r.path, r.err)
			continue
		}
		ratio := "1.00"
		if dr := direct[r.mode+strconv.Itoa(r.clients)]; dr.tps > 0 && r.path != "direct" {
			ratio = fmt.Sprintf("%.2f", r.tps/dr.tps)
		}
		cpu := "—"
		if r.cpu > 0 {
			cpu = us(r.cpu)
		}
		perSync := "—"
		if r.perSync > 0 {
			perSync = fmt.Sprintf("%.1f", r.perSync)
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.0f | %s | %s | %s | %s | %s |\n", r.mode, r.clients, r.path, r.tps, ratio, ms(r.p50), ms(r.p99), cpu, perSync)
	}
	b.WriteString("\n")
	if slices.ContainsFunc(rs, func(r result) bool { return r.path == "pgbouncer" && strings.Contains(r.err, "prepared statement") }) {
		b.WriteString("pgbouncer 1.18 in transaction pooling cannot serve protocol-level prepared statements (a statement\n" +
			"prepared on one server connection is executed on another; 1.21+ can, with max_prepared_statements), so\n" +
			"pgbench -M prepared fails through it once several clients share the pool. pgbouncer-session is the same\n" +
			"pgbouncer in session pooling, which such clients use.\n\n")
	}
	for _, mode := range []string{"simple", "prepared"} {
		for _, p := range []string{"gateway", "gateway-overlap"} {
			dr, gw := find(rs, mode, 1, "direct"), find(rs, mode, 1, p)
			if dr.err == "" && gw.err == "" && dr.tps > 0 && gw.tps > 0 {
				fmt.Fprintf(&b, "At 1 client (%s), %s adds %s at p50 (%s → %s) and %s at p99.\n",
					mode, p, us(gw.p50-dr.p50), ms(dr.p50), ms(gw.p50), us(gw.p99-dr.p99))
			}
		}
	}
	if slices.Contains(clients, 8) {
		for _, mode := range []string{"simple", "prepared"} {
			dr := find(rs, mode, 8, "direct")
			for _, p := range []string{"gateway", "gateway-overlap", "pgbouncer", "pgbouncer-session"} {
				r := find(rs, mode, 8, p)
				if dr.tps > 0 && r.tps > 0 {
					fmt.Fprintf(&b, "At 8 clients (%s), %s/direct TPS = %.2f.\n", mode, p, r.tps/dr.tps)
				}
			}
		}
	}
	return b.String()
}

func find(rs []result, mode string, clients int, p string) result {
	for _, r := range rs {
		if r.mode == mode && r.clients == clients && r.path == p {
			return r
		}
	}
	return result{err: "not run"}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }
func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }
