package devenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gatehouse-dev/gatehouse/gateway"
)

// launch starts a gateway and waits until it listens and serves the
// bundle. On error it is stopped again.
func launch(ctx context.Context, cfg *gateway.Config, logw io.Writer) (*gateway.Gateway, context.CancelFunc, chan error, error) {
	g, err := gateway.New(cfg, gateway.WithLogger(gateway.NewLogger(cfg.Log, logw)), gateway.WithDevIssuers())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dev: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- g.Run(runCtx) }()
	fail := func(err error) (*gateway.Gateway, context.CancelFunc, chan error, error) {
		stop()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
		}
		return nil, nil, nil, err
	}
	deadline := time.After(15 * time.Second)
	select {
	case <-g.Ready:
	case err := <-stopped:
		stopped <- err
		return fail(fmt.Errorf("dev: gateway: %w", err))
	case <-deadline:
		return fail(errors.New("dev: the gateway did not start listening within 15s"))
	}
	for g.Store().Current() == nil {
		select {
		case err := <-stopped:
			stopped <- err
			return fail(fmt.Errorf("dev: gateway: %w", err))
		case <-deadline:
			last := "none"
			if msg := g.Store().Stats.LastError.Load(); msg != nil {
				last = *msg
			}
			return fail(fmt.Errorf("dev: the gateway did not activate the bundle within 15s (last error: %s)", last))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return g, stop, stopped, nil
}

// StartExtraGateway starts another gateway beside the environment's, on
// the same bundle, upstreams and certificate, with a data directory of its
// own and its PostgreSQL listener on a free loopback port, after mutate
// has changed its config (a benchmark compares settings this way). Close
// stops it.
func (e *Env) StartExtraGateway(ctx context.Context, mutate func(*gateway.Config)) (*gateway.Gateway, error) {
	if e.gatewayCfg.Postgres == nil {
		return nil, errors.New("dev: the environment's gateway serves no PostgreSQL")
	}
	cfg := e.gatewayCfg
	pg := *cfg.Postgres
	pg.Listen = "127.0.0.1:0"
	cfg.Postgres, cfg.SSH, cfg.Kubernetes = &pg, nil, nil
	cfg.Admin = gateway.AdminListener{Listen: "127.0.0.1:0"}
	dir, err := os.MkdirTemp(e.Dir, "gateway-")
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	cfg.DataDir = dir
	if mutate != nil {
		mutate(&cfg)
	}
	logw := io.Writer(io.Discard)
	if e.logFile != nil {
		logw = e.logFile
	}
	g, stop, stopped, err := launch(ctx, &cfg, logw)
	if err != nil {
		return nil, err
	}
	e.extras = append(e.extras, extraGateway{stop: stop, stopped: stopped})
	return g, nil
}

// extraGateway is a gateway StartExtraGateway started.
type extraGateway struct {
	stop    context.CancelFunc
	stopped chan error
}
