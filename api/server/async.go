package server

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
)

func opLocation(id string) string { return "/v1/operations/" + url.PathEscape(id) }

// asyncOf says whether a request asks not to wait: "async": true in its
// body (bodyAsync), the header "Prefer: respond-async" or ?async=true.
func asyncOf(r *http.Request, bodyAsync bool) (bool, error) {
	async := bodyAsync
	if vs, ok := r.URL.Query()[api.QueryAsync]; ok {
		q, err := parseBool(api.QueryAsync, vs)
		if err != nil {
			return false, err
		}
		async = async || q
	}
	return async || prefersAsync(r.Header), nil
}

// prefersAsync reads the Prefer headers (RFC 7240): a comma-separated
// list of preferences, each with optional parameters after ';'.
func prefersAsync(h http.Header) bool {
	for _, v := range h.Values(api.PreferHeader) {
		for pref := range strings.SplitSeq(v, ",") {
			token, _, _ := strings.Cut(pref, ";")
			if strings.EqualFold(strings.TrimSpace(token), api.PreferAsync) {
				return true
			}
		}
	}
	return false
}

// parseBool reads a boolean query parameter given once: true, 1, false
// or 0; an empty value (?children) is true, as ?tree is.
func parseBool(name string, vs []string) (bool, error) {
	if len(vs) != 1 {
		return false, fmt.Errorf("%w: %s given %d times", errBadRequest, name, len(vs))
	}
	switch vs[0] {
	case "", "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%w: %s must be true or false, not %q", errBadRequest, name, vs[0])
}

// withProgress adds a running operation's progress, as the driver
// reports it, to op.
func (s *Server) withProgress(op *api.Operation) {
	if op.State != api.OpRunning {
		return
	}
	if p, ok := s.drv.OperationProgress(op.ID); ok {
		op.Progress = &api.Progress{DoneBytes: p.DoneBytes, TotalBytes: p.TotalBytes, Cancellable: p.Cancellable}
	}
}

// cancelOperation asks the driver to cancel a running operation. An
// accepted cancel answers 202 with the operation, still running: it
// ends as soon as its jobs are cancelled, failed with
// operation-aborted. Past the point of no return, or for an operation
// that cannot be cancelled or has ended, the answer is 409
// operation-invalid; for an unknown id, 404 no-operation.
func (s *Server) cancelOperation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := s.drv.CancelOperation(id)
	if err == nil {
		op, ok := s.operation(id)
		if !ok { // started by another front end
			op = api.Operation{ID: id, State: api.OpRunning}
		}
		s.withProgress(&op)
		w.Header().Set("Location", opLocation(id))
		writeJSON(w, http.StatusAccepted, op)
		return
	}
	if errors.Is(err, driver.ErrNoOperation) {
		err = s.notCancellable(id, err)
	}
	s.writeErr(w, err)
}

// notCancellable says why an operation the driver does not run cannot
// be cancelled; notRunning (no-operation) if the id names nothing.
func (s *Server) notCancellable(id string, notRunning error) error {
	if op, ok := s.operation(id); ok {
		if op.State == api.OpRunning {
			return fmt.Errorf("%w: operation '%s' (%s) cannot be cancelled now: only a merge can, while it copies data",
				driver.ErrOperationInvalid, id, op.Kind)
		}
		return fmt.Errorf("%w: operation '%s' has ended: %s", driver.ErrOperationInvalid, id, op.State)
	}
	if _, err := s.drv.Store().Op(id); err == nil {
		return fmt.Errorf("%w: operation '%s' is not running in this daemon", driver.ErrOperationInvalid, id)
	}
	return notRunning
}
