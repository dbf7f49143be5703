package testutil

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// BinaryEnv names a prebuilt mptcp-xdp binary for BuildBinary to copy instead of building one: the
// kernel matrix sets it (its guest has no Go module cache and no network to fill one).
const BinaryEnv = "MPTCP_XDP_BIN"

// BuildBinary writes the mptcp-xdp binary to out (mode 0755): a copy of $MPTCP_XDP_BIN when that is
// set, else `go build` of ./cmd/mptcp-xdp, bounded (a test binary's -timeout alarm starts only in
// m.Run, so a stuck build would hang TestMain).
func BuildBinary(out string) error {
	if src := os.Getenv(BinaryEnv); src != "" {
		if err := copyFile(src, out, 0o755); err != nil {
			return fmt.Errorf("copy %s=%s: %w", BinaryEnv, src, err)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/mptcp-xdp/mptcp-xdp/cmd/mptcp-xdp")
	build.WaitDelay = 10 * time.Second
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(o, in); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}
