package main

import (
	"errors"
	"strings"
	"testing"
)

// Every error reaches the user as one line, cobra's suggestions included.
func TestErrorsOnOneLine(t *testing.T) {
	root := newRootCmd()
	root.SetArgs([]string{"stat"})
	root.SetOut(new(strings.Builder))
	root.SetErr(new(strings.Builder))
	err := root.Execute()
	if err == nil {
		t.Fatal("unknown command accepted")
	}
	got := oneLine(err.Error())
	if strings.Contains(got, "\n") || !strings.Contains(got, `unknown command "stat"`) ||
		!strings.Contains(got, "status") || !strings.Contains(got, "stats") {
		t.Errorf("unknown command: %q", got)
	}
	if got := oneLine(errors.Join(errors.New("a"), errors.New("b")).Error()); got != "a b" {
		t.Errorf("joined errors: %q", got)
	}
}
