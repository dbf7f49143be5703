// Package mptcppm talks to the kernel's MPTCP path manager over generic netlink ("mptcp_pm",
// include/uapi/linux/mptcp.h): its endpoints, in the network namespace of the calling thread (run
// it under pkg/netns.Do for another one). It is what `ip mptcp endpoint` does, without iproute2.
package mptcppm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	cmdAddAddr = 1 // MPTCP_PM_CMD_ADD_ADDR
	cmdDelAddr = 2 // MPTCP_PM_CMD_DEL_ADDR
	cmdGetAddr = 3 // MPTCP_PM_CMD_GET_ADDR
	attrAddr   = 1 // MPTCP_PM_ATTR_ADDR (nested)
	addrFamily = 1 // MPTCP_PM_ADDR_ATTR_FAMILY
	addrID     = 2 // MPTCP_PM_ADDR_ATTR_ID
	addrAddr4  = 3 // MPTCP_PM_ADDR_ATTR_ADDR4
	addrAddr6  = 4 // MPTCP_PM_ADDR_ATTR_ADDR6
	addrPort   = 5 // MPTCP_PM_ADDR_ATTR_PORT
	addrFlags  = 6 // MPTCP_PM_ADDR_ATTR_FLAGS
	addrIfIdx  = 7 // MPTCP_PM_ADDR_ATTR_IF_IDX
	genlVer    = 1 // MPTCP_PM_VER
)

// Endpoint flags (MPTCP_PM_ADDR_FLAG_*).
const (
	FlagSignal   = 1 << 0
	FlagSubflow  = 1 << 1
	FlagBackup   = 1 << 2
	FlagFullmesh = 1 << 3
)

// Endpoint is one path-manager endpoint.
type Endpoint struct {
	ID      uint8      `json:"id"`
	Addr    netip.Addr `json:"addr"`
	Port    uint16     `json:"port,omitempty"`
	Flags   uint32     `json:"flags"`
	Ifindex int32      `json:"ifindex,omitempty"`
}

// ErrNoPathManager is returned when the kernel has no mptcp_pm family (no MPTCP).
var ErrNoPathManager = errors.New("the kernel has no MPTCP path manager (generic netlink family mptcp_pm)")

func family() (uint16, error) {
	fam, err := netlink.GenlFamilyGet("mptcp_pm")
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrNoPathManager, err)
	}
	return fam.ID, nil
}

func addrAttr(e Endpoint) *nl.RtAttr {
	nest := nl.NewRtAttr(attrAddr|unix.NLA_F_NESTED, nil)
	a := e.Addr.Unmap()
	if a.IsValid() {
		if a.Is4() {
			b := a.As4()
			nest.AddRtAttr(addrFamily, nl.Uint16Attr(unix.AF_INET))
			nest.AddRtAttr(addrAddr4, b[:])
		} else {
			b := a.As16()
			nest.AddRtAttr(addrFamily, nl.Uint16Attr(unix.AF_INET6))
			nest.AddRtAttr(addrAddr6, b[:])
		}
	}
	if e.ID != 0 {
		nest.AddRtAttr(addrID, nl.Uint8Attr(e.ID))
	}
	if e.Port != 0 {
		nest.AddRtAttr(addrPort, nl.Uint16Attr(e.Port))
	}
	if e.Flags != 0 {
		nest.AddRtAttr(addrFlags, nl.Uint32Attr(e.Flags))
	}
	if e.Ifindex != 0 {
		nest.AddRtAttr(addrIfIdx, nl.Uint32Attr(uint32(e.Ifindex)))
	}
	return nest
}

// Add adds an endpoint (ID 0: the kernel picks one) and returns it as the kernel lists it.
func Add(e Endpoint) (Endpoint, error) {
	id, err := family()
	if err != nil {
		return Endpoint{}, err
	}
	req := nl.NewNetlinkRequest(int(id), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmdAddAddr, Version: genlVer})
	req.AddData(addrAttr(e))
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return Endpoint{}, fmt.Errorf("add endpoint %s: %w", e.Addr, err)
	}
	eps, err := List()
	if err != nil {
		return Endpoint{}, err
	}
	for _, got := range eps {
		if got.Addr == e.Addr.Unmap() && (e.ID == 0 || got.ID == e.ID) {
			return got, nil
		}
	}
	return Endpoint{}, fmt.Errorf("endpoint %s added but not listed", e.Addr)
}

// Delete removes the endpoint with the given id.
func Delete(endpointID uint8) error {
	id, err := family()
	if err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(int(id), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmdDelAddr, Version: genlVer})
	req.AddData(addrAttr(Endpoint{ID: endpointID}))
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", endpointID, err)
	}
	return nil
}

// List returns the endpoints.
func List() ([]Endpoint, error) {
	id, err := family()
	if err != nil {
		return nil, err
	}
	req := nl.NewNetlinkRequest(int(id), unix.NLM_F_DUMP)
	req.AddData(&nl.Genlmsg{Command: cmdGetAddr, Version: genlVer})
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	var out []Endpoint
	for _, m := range msgs {
		if len(m) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[nl.SizeofGenlmsg:])
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
		for _, at := range attrs {
			if at.Attr.Type&^unix.NLA_F_NESTED != attrAddr {
				continue
			}
			inner, err := nl.ParseRouteAttr(at.Value)
			if err != nil {
				return nil, fmt.Errorf("list endpoints: %w", err)
			}
			var e Endpoint
			for _, in := range inner {
				v := in.Value
				switch in.Attr.Type {
				case addrID:
					if len(v) >= 1 {
						e.ID = v[0]
					}
				case addrAddr4:
					if len(v) == 4 {
						e.Addr = netip.AddrFrom4([4]byte(v))
					}
				case addrAddr6:
					if len(v) == 16 {
						e.Addr = netip.AddrFrom16([16]byte(v))
					}
				case addrPort:
					if len(v) == 2 {
						e.Port = binary.NativeEndian.Uint16(v)
					}
				case addrFlags:
					if len(v) == 4 {
						e.Flags = binary.NativeEndian.Uint32(v)
					}
				case addrIfIdx:
					if len(v) == 4 {
						e.Ifindex = int32(binary.NativeEndian.Uint32(v))
					}
				}
			}
			out = append(out, e)
		}
	}
	return out, nil
}
