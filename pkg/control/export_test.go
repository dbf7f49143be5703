package control

// SetStepHook makes every multi-step change call fn after each step; an error from fn stops the
// change there, as a process killed at that point would. It returns a function that removes it.
func SetStepHook(fn func(step string) error) func() {
	stepHook = fn
	return func() { stepHook = nil }
}
