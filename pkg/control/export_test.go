package control

// SetStepHook makes every multi-step change call fn after each step; an error from fn stops the
// change there, as a process killed at that point would. It returns a function that removes it.
func SetStepHook(fn func(step string) error) func() {
	stepHook = fn
	return func() { stepHook = nil }
}

// Restart is what a control plane restarted after a crash does before anything else (`lb run`'s
// first cycle): read the set back, finish what was left half done, and rewrite VIP tables that
// differ from the set's.
func (b *Balancer) Restart() error { return b.locked(b.reconcile) }
