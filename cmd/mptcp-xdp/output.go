package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func validateOutput(o string) error {
	switch o {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q: use table or json", o)
}

// render writes v as indented JSON when -o json was asked for, else calls table with a tabwriter
// that is flushed afterwards. Everything goes to cmd.OutOrStdout() so that tests can read it.
func render(cmd *cobra.Command, g *globalFlags, v any, table func(w io.Writer) error) error {
	out := cmd.OutOrStdout()
	if g.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if err := table(tw); err != nil {
		return err
	}
	return tw.Flush()
}
