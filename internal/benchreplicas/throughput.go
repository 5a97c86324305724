package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// tpResult is one throughput run.
type tpResult struct {
	name     string
	replicas int
	tx       int64
	elapsed  time.Duration
	p50, p99 time.Duration
	// cpu is this process's CPU time (gateways and clients) per
	// transaction.
	cpu time.Duration
	// perSync is how many durable events one fdatasync of the
	// recorders served (their group commits), over the replicas used.
	perSync float64
	round   int
}

func (r tpResult) tps() float64 { return float64(r.tx) / r.elapsed.Seconds() }

const pointSelect = "SELECT name FROM items WHERE id = $1"

func (b *bench) throughput(ctx context.Context, clients int, d time.Duration, mode string, rounds int) ([]tpResult, error) {
	runs := []struct {
		name    string
		targets []*replica
	}{
		{"1 replica (A)", b.replicas[:1]},
		{"3 replicas (A, B, C round-robin)", b.replicas},
	}
	var out []tpResult
	// The two set-ups alternate, rounds times, so that neither gains from
	// running later (a warmer cache, a quieter machine).
	for round := 1; round <= rounds; round++ {
		for _, run := range runs {
			fmt.Printf("  round %d  %-34s warm-up 2s ... ", round, run.name)
			if _, err := b.load(ctx, run.targets, clients, 2*time.Second, mode); err != nil {
				return nil, err
			}
			var recs0, syncs0 int64
			for _, t := range run.targets {
				recs0 += t.g.RecorderStats().Records.Load()
				syncs0 += t.g.RecorderStats().Syncs.Load()
			}
			r, err := b.load(ctx, run.targets, clients, d, mode)
			if err != nil {
				return nil, err
			}
			var recs, syncs int64
			for _, t := range run.targets {
				recs += t.g.RecorderStats().Records.Load()
				syncs += t.g.RecorderStats().Syncs.Load()
			}
			if syncs > syncs0 {
				r.perSync = float64(recs-recs0) / float64(syncs-syncs0)
			}
			r.name, r.replicas, r.round = run.name, len(run.targets), round
			fmt.Printf("%8.0f tx/s  p50 %s  p99 %s  cpu %s/tx  %.1f events/fdatasync\n", r.tps(), ms(r.p50), ms(r.p99), us(r.cpu), r.perSync)
			out = append(out, r)
		}
	}
	return out, nil
}

// load connects clients sessions, round-robin over targets, then runs the
// point SELECT on each for d, and counts.
func (b *bench) load(ctx context.Context, targets []*replica, clients int, d time.Duration, mode string) (tpResult, error) {
	conns := make([]*pgx.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close(ctx)
			}
		}
	}()
	for i := range conns {
		c, err := b.connect(ctx, targets[i%len(targets)], nil)
		if err != nil {
			return tpResult{}, fmt.Errorf("client %d to replica %c: %w", i, 'A'+i%len(targets), err)
		}
		conns[i] = c
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		lats  []time.Duration
		total int64
		first error
	)
	cpu0 := cpuTime()
	start := time.Now()
	stop := start.Add(d)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var n int64
			var name string
			var err error
			for {
				t0 := time.Now()
				if !t0.Before(stop) {
					break
				}
				args := []any{1 + rand.IntN(10000)}
				if mode == "simple" {
					// The value is interpolated client-side; one Query message.
					args = []any{pgx.QueryExecModeSimpleProtocol, args[0]}
				}
				if err = c.QueryRow(ctx, pointSelect, args...).Scan(&name); err != nil {
					break
				}
				mine = append(mine, time.Since(t0))
				n++
			}
			mu.Lock()
			defer mu.Unlock()
			lats = append(lats, mine...)
			total += n
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	if first != nil {
		return tpResult{}, fmt.Errorf("point SELECT: %w", first)
	}
	slices.Sort(lats)
	r := tpResult{tx: total, elapsed: elapsed, p50: percentile(lats, 0.50), p99: percentile(lats, 0.99)}
	if total > 0 {
		r.cpu = cpu / time.Duration(total)
	}
	return r, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
