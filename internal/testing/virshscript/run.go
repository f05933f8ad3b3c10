package virshscript

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// A Runner runs a script with one virsh against one server.
type Runner struct {
	Virsh string   // the virsh binary
	URI   string   // passed as -c
	Dir   string   // the VM's image directory, for Placeholder
	Env   []string // extra NAME=value for every step
	// StepTimeout bounds each step; 0 means two minutes, which a merge
	// of small images never needs.
	StepTimeout time.Duration
}

// Run runs every step in order and records each, whatever its exit
// status; it stops only when virsh cannot be run at all or ctx ends.
// Output is normalized with r.Dir.
func (r *Runner) Run(ctx context.Context, s Script) ([]Result, error) {
	var out []Result
	for _, st := range s {
		res, err := r.step(ctx, st)
		if err != nil {
			return out, fmt.Errorf("step %s: %w", st.Name, err)
		}
		out = append(out, res)
	}
	return out, nil
}

func (r *Runner) step(ctx context.Context, st Step) (Result, error) {
	if st.File != nil {
		path := filepath.Join(r.Dir, st.File.Name)
		if err := os.WriteFile(path, []byte(expand(st.File.Content, r.Dir)), 0o644); err != nil {
			return Result{}, err
		}
	}
	limit := r.StepTimeout
	if limit == 0 {
		limit = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	args := []string{"-c", r.URI}
	for _, a := range st.Args {
		args = append(args, expand(a, r.Dir))
	}
	cmd := exec.CommandContext(ctx, r.Virsh, args...)
	cmd.Env = append(append(os.Environ(), r.Env...), st.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return Result{}, fmt.Errorf("virsh: %w", ctx.Err())
	case errors.As(err, &exit):
	case err != nil:
		return Result{}, err
	}
	return Result{
		Name:   st.Name,
		Env:    st.Env,
		Args:   st.Args,
		Exit:   cmd.ProcessState.ExitCode(),
		Stdout: Normalize(stdout.String(), r.Dir),
		Stderr: Normalize(stderr.String(), r.Dir),
	}, nil
}
