package stats_test

import (
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }
