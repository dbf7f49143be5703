package stats_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// ssSubflow is one MPTCP subflow as `ss -tinme` shows it: the socket line and the fields of its
// "tcp-ulp-mptcp" part.
type ssSubflow struct {
	State         string
	Local, Remote netip.AddrPort
	Cookie        uint64 // "sk:" (hex), the socket cookie
	Token         uint32 // the local token (after the slash)
	LocalID       uint8
	RemoteID      uint8
	Flags         string // letters, 'v' (map valid, not a subflow property) removed
}

// ssSubflows lists the MPTCP subflows of ns that are not listening, from `ss -N ns -tineH`.
func ssSubflows(ns string) ([]ssSubflow, error) {
	out, err := exec.CommandContext(context.Background(), "ss", "-N", ns, "-tineH").Output()
	if err != nil {
		return nil, fmt.Errorf("ss -N %s -tineH: %w", ns, err)
	}
	return parseSSSubflows(string(out))
}

var (
	reCookie = regexp.MustCompile(`\bsk:([0-9a-f]+)\b`)
	reFlags  = regexp.MustCompile(`tcp-ulp-mptcp(?: flags:([A-Za-z]+))?`)
	reToken  = regexp.MustCompile(`\btoken:([0-9a-f]+)\(id:(\d+)\)/([0-9a-f]+)\(id:(\d+)\)`)
	reZone   = regexp.MustCompile(`%[^:\]]+`)
)

func parseSSSubflows(out string) ([]ssSubflow, error) {
	var res []ssSubflow
	var cur *ssSubflow
	var curLine string
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			f := strings.Fields(line)
			if len(f) < 5 {
				return nil, fmt.Errorf("ss: unexpected line %q", line)
			}
			var err error
			s := ssSubflow{State: f[0]}
			if s.Local, err = parseSSAddr(f[3]); err != nil {
				return nil, err
			}
			if s.Remote, err = parseSSAddr(f[4]); err != nil {
				return nil, err
			}
			m := reCookie.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("ss: no sk: cookie in %q", line)
			}
			if s.Cookie, err = strconv.ParseUint(m[1], 16, 64); err != nil {
				return nil, err
			}
			cur, curLine = &s, line
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("ss: info line before socket: %q", line)
		}
		s := *cur
		cur = nil
		m := reFlags.FindStringSubmatch(line)
		if m == nil || s.State == "LISTEN" {
			continue // plain TCP, or a listener
		}
		s.Flags = strings.ReplaceAll(m[1], "v", "")
		t := reToken.FindStringSubmatch(line)
		if t == nil {
			return nil, fmt.Errorf("ss: MPTCP subflow without token: %q / %q", curLine, line)
		}
		tok, _ := strconv.ParseUint(t[3], 16, 32)
		rid, _ := strconv.ParseUint(t[2], 10, 8)
		lid, _ := strconv.ParseUint(t[4], 10, 8)
		s.Token, s.RemoteID, s.LocalID = uint32(tok), uint8(rid), uint8(lid)
		res = append(res, s)
	}
	return res, nil
}

// parseSSAddr reads "10.0.0.1:80", "10.0.0.1%eth0:80", "[fd00::1]:80", "[::ffff:10.0.0.1]:80".
func parseSSAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(reZone.ReplaceAllString(s, ""))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("ss: address %q: %w", s, err)
	}
	return ap, nil
}
