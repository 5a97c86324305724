package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// percentile of sorted durations, by nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func stats(ds []time.Duration) (p50, p90, hi time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentile(s, 0.5), percentile(s, 0.9), s[len(s)-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond)) }

func formatReport(rel *releaseResult, tp []tpResult, n, clients int, d time.Duration, mode string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Replicas: held-statement release and throughput (%d CPUs)\n\n", numCPU())
	fmt.Fprintf(&b, "Three gateway replicas in one process, one signed bundle file, approvals in one PostgreSQL state database (LISTEN/NOTIFY, 1s poll fallback), the same PostgreSQL as upstream.\n\n")
	fmt.Fprintf(&b, "### Held-statement release latency (%d per path)\n\n", n)
	fmt.Fprintf(&b, "A client on replica A runs an INSERT a review rule holds; an approver POSTs `/v1/approvals/{id}/approve` to replica B's admin API, or to A's. Latency: from the approve call's HTTP response to the held statement's completion on A (and, in its own column, from sending the approve call).\n\n")
	fmt.Fprintf(&b, "| path | p50 | p90 | max | p50 from send | approve call p50 |\n|---|---:|---:|---:|---:|---:|\n")
	for _, p := range []string{pathCross, pathLocal} {
		a50, a90, amax := stats(rel.fromResponse[p])
		s50, _, _ := stats(rel.fromRequest[p])
		h50, _, _ := stats(rel.http[p])
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", p, ms(a50), ms(a90), ms(amax), ms(s50), ms(h50))
	}
	f50, f90, fmax := stats(rel.floor)
	fmt.Fprintf(&b, "| floor: the same INSERT, not held (from send) | %s | %s | %s | | |\n", ms(f50), ms(f90), ms(fmax))
	fmt.Fprintf(&b, "\nA negative latency means the statement completed on A before the approver had read the approve call's response.\n\n")
	fmt.Fprintf(&b, "### Throughput, three replicas against one (%d clients, %s protocol, %s per run)\n\n", clients, mode, d)
	fmt.Fprintf(&b, "Point SELECT (`%s`), TLS, one session per client; with three replicas the clients are spread round-robin.\n\n", pointSelect)
	fmt.Fprintf(&b, "| round | gateways | tx/s | p50 | p99 | CPU/tx (gateways + clients) | events/fdatasync |\n|---:|---|---:|---:|---:|---:|---:|\n")
	sum := map[int]float64{}
	secs := map[int]float64{}
	for _, r := range tp {
		fmt.Fprintf(&b, "| %d | %s | %.0f | %s | %s | %s | %.1f |\n", r.round, r.name, r.tps(), ms(r.p50), ms(r.p99), us(r.cpu), r.perSync)
		sum[r.replicas] += float64(r.tx)
		secs[r.replicas] += r.elapsed.Seconds()
	}
	if secs[1] > 0 && secs[3] > 0 && sum[1] > 0 {
		one, three := sum[1]/secs[1], sum[3]/secs[3]
		fmt.Fprintf(&b, "\nOver all rounds: one replica %.0f tx/s, three replicas %.0f tx/s. Ratio, 3 replicas / 1: **%.2f**.", one, three, three/one)
	}
	fmt.Fprintf(&b, " On this %d-CPU machine the three replicas, the clients and PostgreSQL share the same cores: the ratio measures the overhead of running replicas on shared state, not scale-out.\n", numCPU())
	return b.String()
}
