package control

import (
	"errors"
	"time"
)

// GCConfig bounds how long idle state lives. The flow and token tables are LRU maps, so the
// datapath never runs out of room; collection keeps them to live connections and drops state that
// points at backends no longer in the set.
type GCConfig struct {
	// FlowIdle: a flow without a packet for this long is forgotten (its next packet is placed by
	// Maglev again, which is the same backend unless the set changed). 0 means 10 minutes.
	FlowIdle time.Duration
	// TokenIdle: a token not refreshed for this long is forgotten (a join with it then follows the
	// unknown-join policy). The datapath refreshes a token at most once a second while any flow of
	// its connection carries packets. 0 means 30 minutes.
	TokenIdle time.Duration
}

func (c GCConfig) withDefaults() GCConfig {
	if c.FlowIdle <= 0 {
		c.FlowIdle = 10 * time.Minute
	}
	if c.TokenIdle <= 0 {
		c.TokenIdle = 30 * time.Minute
	}
	return c
}

// GCResult counts what one collection removed and kept.
type GCResult struct {
	Flows, Tokens             int // entries seen
	IdleFlows, IdleTokens     int // removed for idleness
	OrphanFlows, OrphanTokens int // removed because their backend is gone
	FlowsAfter, TokensAfter   int
}

// GC removes idle flows and tokens, and those of backends no longer in the set, as of the
// monotonic time now (lb.Monotonic(), the datapath's clock).
func (b *Balancer) GC(cfg GCConfig, now time.Duration) (GCResult, error) {
	cfg = cfg.withDefaults()
	live := map[uint32]bool{}
	for _, be := range b.set.List() {
		live[be.ID] = true
	}
	var r GCResult
	var errs []error
	flows, err := b.Maps.ListFlows()
	if err != nil {
		return r, err
	}
	r.Flows = len(flows)
	for _, f := range flows {
		switch {
		case !live[f.Backend]:
			r.OrphanFlows++
		case now-f.LastSeen > cfg.FlowIdle:
			r.IdleFlows++
		default:
			continue
		}
		if err := b.Maps.DeleteFlow(f.FlowKey); err != nil {
			errs = append(errs, err)
		}
	}
	tokens, err := b.Maps.ListTokens()
	if err != nil {
		return r, errors.Join(append(errs, err)...)
	}
	r.Tokens = len(tokens)
	for _, t := range tokens {
		switch {
		case !live[t.Backend]:
			r.OrphanTokens++
		case now-t.LastSeen > cfg.TokenIdle:
			r.IdleTokens++
		default:
			continue
		}
		if err := b.Maps.DeleteToken(t.VIPID, t.Token); err != nil {
			errs = append(errs, err)
		}
	}
	r.FlowsAfter = r.Flows - r.IdleFlows - r.OrphanFlows
	r.TokensAfter = r.Tokens - r.IdleTokens - r.OrphanTokens
	return r, errors.Join(errs...)
}
