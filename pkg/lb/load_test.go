package lb

import "testing"

func TestLoad(t *testing.T) {
	b := loadBalancer(t, testConfig)
	info, err := b.Program.Info()
	if err != nil {
		t.Fatal(err)
	}
	insns, _ := info.VerifiedInstructions()
	t.Logf("program %s: %d verified instructions", info.Name, insns)
	d, err := LoadDecap(DecapConfig{})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
}
