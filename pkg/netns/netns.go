// Package netns runs code inside named network namespaces (the ones `ip netns` manages under
// /run/netns) by switching one locked OS thread with setns(2). Unlike `ip netns exec` it leaves the
// mount namespace alone, so /sys/fs/bpf stays the host's bpffs and pins made inside survive.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces are bound, as iproute2 does.
const Dir = "/run/netns"

// Path is the bind-mount path of the named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Validate reports whether name can name a network namespace.
func Validate(name string) error {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return fmt.Errorf("invalid network namespace name %q", name)
	}
	return nil
}

// Do runs fn on the calling goroutine with its OS thread in the named network namespace; an empty
// name runs fn where the caller is. Sockets, links and netlink handles created by fn belong to that
// namespace and stay usable from any goroutine afterwards.
func Do(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	if err := Validate(name); err != nil {
		return err
	}
	target, err := vns.GetFromPath(Path(name))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", name)
		}
		return fmt.Errorf("open network namespace %q: %w", name, err)
	}
	defer target.Close()
	return doHandle(target, name, fn)
}

func doHandle(target vns.NsHandle, name string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := vns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	if err := vns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %q: %w", name, err)
	}
	defer func() {
		// A thread we cannot bring back stays locked, so the runtime retires it with the goroutine.
		if err := vns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Create makes a named network namespace as `ip netns add` does, without entering it.
func Create(name string) error {
	if err := Validate(name); err != nil {
		return err
	}
	runtime.LockOSThread()
	orig, err := vns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	h, err := vns.NewNamed(name) // switches this thread into the new namespace
	if err != nil {
		if vns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		return fmt.Errorf("create network namespace %q: %w", name, err)
	}
	h.Close()
	if err := vns.Set(orig); err != nil {
		return fmt.Errorf("leave network namespace %q: %w", name, err)
	}
	runtime.UnlockOSThread()
	return nil
}

// Delete removes a named network namespace as `ip netns delete` does. Its interfaces go with it once
// no process holds it.
func Delete(name string) error {
	if err := Validate(name); err != nil {
		return err
	}
	if err := vns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete network namespace %q: %w", name, err)
	}
	return nil
}

// Inode identifies a network namespace: the inode of its nsfs file. An empty name is the caller's.
func Inode(name string) (uint64, error) {
	p := "/proc/thread-self/ns/net"
	if name != "" {
		if err := Validate(name); err != nil {
			return 0, err
		}
		p = Path(name)
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", name)
		}
		return 0, fmt.Errorf("stat %s: %w", p, err)
	}
	return st.Ino, nil
}

// Exists reports whether the named network namespace exists.
func Exists(name string) bool {
	_, err := Inode(name)
	return err == nil && name != ""
}
