package features

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The MPTCP path manager's generic netlink interface (include/uapi/linux/mptcp.h).
const (
	pmCmdAddAddr  = 1 // MPTCP_PM_CMD_ADD_ADDR
	pmCmdGetAddr  = 3 // MPTCP_PM_CMD_GET_ADDR
	pmAttrAddr    = 1 // MPTCP_PM_ATTR_ADDR (nested)
	pmAddrFamily  = 1 // MPTCP_PM_ADDR_ATTR_FAMILY
	pmAddrAddr4   = 3 // MPTCP_PM_ADDR_ATTR_ADDR4
	pmAddrPort    = 5 // MPTCP_PM_ADDR_ATTR_PORT
	pmAddrFlags   = 6 // MPTCP_PM_ADDR_ATTR_FLAGS
	pmFlagSignal  = 1 // MPTCP_PM_ADDR_FLAG_SIGNAL
	pmGenlVersion = 1 // MPTCP_PM_VER
)

// addPortEndpoint adds a signal endpoint addr:port to the path manager of the calling thread's
// network namespace and reads the endpoints back: a kernel without port endpoints refuses the
// port, or drops it (the endpoint then comes back without one).
func addPortEndpoint(addr string, port uint16) error {
	fam, err := netlink.GenlFamilyGet("mptcp_pm")
	if err != nil {
		return fmt.Errorf("generic netlink family mptcp_pm: %w", err)
	}
	a := netip.MustParseAddr(addr).As4()
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: pmCmdAddAddr, Version: pmGenlVersion})
	nest := nl.NewRtAttr(pmAttrAddr|unix.NLA_F_NESTED, nil)
	nest.AddRtAttr(pmAddrFamily, nl.Uint16Attr(unix.AF_INET))
	nest.AddRtAttr(pmAddrAddr4, a[:])
	nest.AddRtAttr(pmAddrPort, nl.Uint16Attr(port))
	nest.AddRtAttr(pmAddrFlags, nl.Uint32Attr(pmFlagSignal))
	req.AddData(nest)
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("add endpoint %s port %d: %w", addr, port, err)
	}
	dump := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_DUMP)
	dump.AddData(&nl.Genlmsg{Command: pmCmdGetAddr, Version: pmGenlVersion})
	msgs, err := dump.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return fmt.Errorf("list endpoints: %w", err)
	}
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return fmt.Errorf("list endpoints: %w", err)
		}
		for _, at := range attrs {
			if at.Attr.Type&^unix.NLA_F_NESTED != pmAttrAddr {
				continue
			}
			inner, err := nl.ParseRouteAttr(at.Value)
			if err != nil {
				return fmt.Errorf("list endpoints: %w", err)
			}
			for _, in := range inner {
				if in.Attr.Type == pmAddrPort && len(in.Value) == 2 && binary.NativeEndian.Uint16(in.Value) == port {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("endpoint %s added, but listed without its port %d", addr, port)
}
