package control

import (
	"errors"
	"net/netip"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
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
// monotonic time now (lb.Monotonic(), the datapath's clock). An idle flow is kept while its
// connection's token is live (an idle backup subflow resumes on its backend) and while its backend
// drains (Maglev no longer places anything there, so the flow could not be found again). Every
// entry is read again just before it is deleted: a packet may have refreshed it meanwhile.
func (b *Balancer) GC(cfg GCConfig, now time.Duration) (GCResult, error) {
	cfg = cfg.withDefaults()
	live, draining := map[uint32]bool{}, map[uint32]bool{}
	for _, be := range b.set.List() {
		live[be.ID] = true
		draining[be.ID] = be.State == Draining
	}
	var r GCResult
	var errs []error
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return r, err
	}
	vipID := map[netip.AddrPort]uint32{}
	for _, v := range vips {
		vipID[v.Addr] = v.ID
	}
	tokens, err := b.Maps.ListTokens()
	if err != nil {
		return r, err
	}
	type tk struct{ vip, token uint32 }
	liveTok := map[tk]bool{}
	for _, t := range tokens {
		if live[t.Backend] && now-t.LastSeen <= cfg.TokenIdle {
			liveTok[tk{t.VIPID, t.Token}] = true
		}
	}
	flows, err := b.Maps.ListFlows()
	if err != nil {
		return r, err
	}
	r.Flows = len(flows)
	// why tells whether flow f is to go, and why (0: it stays).
	why := func(f lb.Flow) int {
		switch {
		case !live[f.Backend]:
			return 1
		case now-f.LastSeen <= cfg.FlowIdle, draining[f.Backend]:
			return 0
		}
		if id, ok := vipID[f.Dst]; ok && f.Token != 0 && liveTok[tk{id, f.Token}] {
			return 0
		}
		return 2
	}
	for _, f := range flows {
		if why(f) == 0 {
			continue
		}
		cur, ok, err := b.Maps.LookupFlowOf(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := why(cur)
		if !ok || w == 0 {
			continue
		}
		if err := b.Maps.DeleteFlows([]lb.Flow{f}); err != nil {
			errs = append(errs, err)
			continue
		}
		if w == 1 {
			r.OrphanFlows++
		} else {
			r.IdleFlows++
		}
	}
	r.Tokens = len(tokens)
	whyTok := func(t lb.Token) int {
		switch {
		case !live[t.Backend]:
			return 1
		case now-t.LastSeen > cfg.TokenIdle:
			return 2
		}
		return 0
	}
	for _, t := range tokens {
		if whyTok(t) == 0 {
			continue
		}
		cur, ok, err := b.Maps.LookupToken(t.VIPID, t.Token)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		w := whyTok(cur)
		if !ok || w == 0 {
			continue
		}
		if err := b.Maps.DeleteToken(t.VIPID, t.Token); err != nil {
			errs = append(errs, err)
			continue
		}
		if w == 1 {
			r.OrphanTokens++
		} else {
			r.IdleTokens++
		}
	}
	r.FlowsAfter = r.Flows - r.IdleFlows - r.OrphanFlows
	r.TokensAfter = r.Tokens - r.IdleTokens - r.OrphanTokens
	// The protected flows just deleted stop counting for new SYNs once their hint slots age.
	if err := b.Maps.RefreshProtectHint(); err != nil {
		errs = append(errs, err)
	}
	return r, errors.Join(errs...)
}
