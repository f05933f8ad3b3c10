// Package server serves qsnapd's HTTP API (package api) on the
// read-write and read-only unix sockets: it checks who is calling,
// decodes requests strictly, runs them on the driver, and renders the
// engine's results and errors as wire types.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/internal/version"
	"github.com/qsnapd/qsnapd/transaction"
)

// Config configures a Server.
type Config struct {
	// Access lists who may use the read-write socket besides root.
	Access Access
	// OpRetention is how long finished operations stay readable.
	OpRetention time.Duration
	// Drain bounds how long shutdown waits for running requests.
	Drain time.Duration
	// EventBuffer is how many events wait for an event stream's client
	// before the stream ends with overflow; api.EventBuffer if unset.
	EventBuffer int
}

// Server serves the API on a read-write and a read-only listener.
type Server struct {
	drv *driver.Driver
	cfg Config
	log *zap.Logger
	ops *opRegistry
	// running counts the asynchronous operations in flight.
	running sync.WaitGroup

	// streamsDone is closed when Serve stops: event streams end.
	streamsDone chan struct{}
	endStreams  func()
	// The graces of an event stream's blocked write (events.go), and
	// the HTTP timeouts, which tests shorten.
	overflowGrace, shutdownGrace time.Duration
	timeouts                     httpTimeouts
}

// httpTimeouts are an http.Server's.
type httpTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// New returns a server over drv.
func New(drv *driver.Driver, cfg Config, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 5 * time.Minute
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = api.EventBuffer
	}
	s := &Server{drv: drv, cfg: cfg, log: log, ops: newOpRegistry(cfg.OpRetention), streamsDone: make(chan struct{}),
		overflowGrace: overflowGrace, shutdownGrace: shutdownGrace,
		timeouts: httpTimeouts{
			readHeader: 10 * time.Second,
			read:       30 * time.Second,
			// A snapshot is bounded by its freeze deadline and QMP
			// ceilings; a rollback by the rollback timeout. An event
			// stream lifts the write timeout for itself (and net/http
			// the read timeout, once a request's header is read).
			write: 10 * time.Minute,
			idle:  2 * time.Minute,
		}}
	s.endStreams = sync.OnceFunc(func() { close(s.streamsDone) })
	s.ops.onState = drv.OperationStateChanged
	return s
}

// Serve serves until ctx ends, then stops accepting, lets running
// requests and asynchronous operations finish (they complete or roll
// back), within Config.Drain, and returns. Either listener may be nil.
func (s *Server) Serve(ctx context.Context, rw, ro net.Listener) error {
	var servers []*http.Server
	errc := make(chan error, 2)
	for _, l := range []struct {
		ln       net.Listener
		readOnly bool
	}{{rw, false}, {ro, true}} {
		if l.ln == nil {
			continue
		}
		hs := &http.Server{
			Handler:           s.Handler(l.readOnly),
			ConnContext:       withPeer,
			ReadHeaderTimeout: s.timeouts.readHeader,
			ReadTimeout:       s.timeouts.read,
			WriteTimeout:      s.timeouts.write,
			IdleTimeout:       s.timeouts.idle,
			ErrorLog:          zap.NewStdLog(s.log.Named("http")),
		}
		servers = append(servers, hs)
		go func(ln net.Listener) { errc <- hs.Serve(ln) }(l.ln)
	}
	select {
	case err := <-errc:
		s.endStreams()
		for _, hs := range servers {
			hs.Close()
		}
		return err
	case <-ctx.Done():
	}
	// Event streams last until their client leaves: end them, or the
	// shutdown waits for them.
	s.endStreams()
	dctx, cancel := context.WithTimeout(context.Background(), s.cfg.Drain)
	defer cancel()
	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for _, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Shutdown(dctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	asyncDone := make(chan struct{})
	go func() {
		s.running.Wait()
		close(asyncDone)
	}()
	select {
	case <-asyncDone:
	case <-dctx.Done():
		errs = append(errs, fmt.Errorf("asynchronous operations still running after %v", s.cfg.Drain))
	}
	return errors.Join(errs...)
}

// Handler is the API on one socket. On the read-only socket every
// mutating request is refused; on the read-write one the peer must be
// root or allowed.
func (s *Server) Handler(readOnly bool) http.Handler {
	mux := http.NewServeMux()
	s.routes(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mutating := r.Method != http.MethodGet && r.Method != http.MethodHead
		peer := peerFrom(r.Context())
		switch {
		case readOnly && mutating:
			s.writeErr(w, fmt.Errorf("%w: %s is refused on the read-only socket", errForbidden, r.Method))
			return
		case !readOnly && !s.cfg.Access.allows(peer):
			s.log.Warn("request refused", zap.Int("uid", peer.UID), zap.Int("gid", peer.GID),
				zap.Int("pid", peer.PID), zap.String("method", r.Method), zap.String("path", r.URL.Path))
			s.writeErr(w, fmt.Errorf("%w: uid %d may not use this socket", errForbidden, peer.UID))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
		h, pattern := mux.Handler(r)
		if pattern == "" {
			// The mux answers 404 or 405 in plain text; answer in JSON.
			rec := &statusRecorder{header: http.Header{}}
			h.ServeHTTP(rec, r)
			if allow := rec.header.Get("Allow"); allow != "" {
				w.Header().Set("Allow", allow)
			}
			code := api.CodeInvalidArg
			if rec.status == http.StatusNotFound {
				code = api.CodeNoDomain
			}
			writeJSON(w, rec.status, api.ErrorBody{Error: api.ErrorInfo{Code: code,
				Message: fmt.Sprintf("%s %s: %s", r.Method, r.URL.Path, strings.ToLower(http.StatusText(rec.status)))}})
			return
		}
		mux.ServeHTTP(w, r) // sets the path values, which Handler does not
	})
}

// statusRecorder catches the status and headers of the mux's own error
// replies.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/version", s.version)
	mux.HandleFunc("GET /v1/domains", s.listDomains)
	mux.HandleFunc("POST /v1/domains", s.attachDomain)
	mux.HandleFunc("GET /v1/domains/{name}", s.getDomain)
	mux.HandleFunc("DELETE /v1/domains/{name}", s.detachDomain)
	mux.HandleFunc("GET /v1/domains/{name}/disks", s.listDisks)
	mux.HandleFunc("POST /v1/domains/{name}/snapshots", s.createSnapshot)
	mux.HandleFunc("GET /v1/domains/{name}/snapshots", s.listSnapshots)
	mux.HandleFunc("GET /v1/domains/{name}/snapshots/current", s.getCurrent)
	mux.HandleFunc("PUT /v1/domains/{name}/snapshots/current", s.setCurrent)
	mux.HandleFunc("GET /v1/domains/{name}/snapshots/{snap}", s.getSnapshot)
	mux.HandleFunc("DELETE /v1/domains/{name}/snapshots/{snap}", s.deleteSnapshot)
	mux.HandleFunc("POST /v1/domains/{name}/fsfreeze", s.fsFreeze)
	mux.HandleFunc("POST /v1/domains/{name}/fsthaw", s.fsThaw)
	mux.HandleFunc("GET /v1/domains/{name}/fsfreeze", s.fsStatus)
	mux.HandleFunc("GET /v1/operations/{id}", s.getOperation)
	mux.HandleFunc("DELETE /v1/operations/{id}", s.cancelOperation)
	mux.HandleFunc("GET "+api.EventsPath, s.events)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// The status is sent: a client that hung up has nobody to tell.
	_ = enc.Encode(v)
}

func (s *Server) writeErr(w http.ResponseWriter, err error) {
	status, info := errorInfo(err)
	if status == http.StatusInternalServerError {
		s.log.Error("request failed with an internal error", zap.Error(err))
	}
	writeJSON(w, status, api.ErrorBody{Error: info})
}

// decodeAsync decodes a mutating request's body and says whether it
// asks to run asynchronously: by its async field (read once decoded),
// the Prefer header or ?async.
func decodeAsync(r *http.Request, v any, asyncField *bool) (bool, error) {
	if err := decode(r, v); err != nil {
		return false, err
	}
	return asyncOf(r, *asyncField)
}

// decode reads a JSON object body strictly: one object, nothing after
// it, no unknown fields, so that a typo is not silently ignored.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: body over %d bytes", errBadRequest, api.MaxBodyBytes)
		}
		return fmt.Errorf("%w: read body: %v", errBadRequest, err)
	}
	trimmed := bytes.TrimSpace(body)
	switch {
	case len(trimmed) == 0:
		return fmt.Errorf("%w: empty body", errBadRequest)
	case !json.Valid(trimmed):
		return fmt.Errorf("%w: malformed JSON", errBadRequest)
	case trimmed[0] != '{':
		return fmt.Errorf("%w: the body must be a JSON object", errBadRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.VersionInfo{Version: version.String(), GoVersion: version.Go(), APIVersion: api.APIVersion})
}

func (s *Server) listDomains(w http.ResponseWriter, r *http.Request) {
	out := []api.Domain{}
	for _, d := range s.drv.Domains() {
		out = append(out, toDomain(d))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getDomain(w http.ResponseWriter, r *http.Request) {
	info, err := s.drv.DomainInfo(r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toDomain(info))
}

func (s *Server) attachDomain(w http.ResponseWriter, r *http.Request) {
	var req api.AttachRequest
	async, err := decodeAsync(r, &req, &req.Async)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpDomainAttach, domain: req.Name, async: async, status: http.StatusCreated},
		func(ctx context.Context, _ string) (any, error) {
			info, err := s.drv.AttachDomain(ctx, driver.DomainConfig{Name: req.Name, QMP: req.QMP, Agent: req.Agent})
			if err != nil {
				return nil, err
			}
			return toDomain(info), nil
		})
}

func (s *Server) detachDomain(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	async, err := asyncOf(r, false)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpDomainDetach, domain: domain, async: async, status: http.StatusNoContent},
		func(ctx context.Context, _ string) (any, error) {
			// Refused, not queued, while an operation runs.
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			return nil, s.drv.DetachDomain(ctx, domain)
		})
}

func (s *Server) listDisks(w http.ResponseWriter, r *http.Request) {
	disks, err := s.drv.Disks(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := []api.Disk{}
	for _, d := range disks {
		backing := []string{}
		for _, b := range d.Backing {
			backing = append(backing, b.File)
		}
		out = append(out, api.Disk{Target: d.Target, Source: d.File, Format: d.Format, NodeName: d.NodeName, Backing: backing})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	var req api.CreateSnapshotRequest
	async, err := decodeAsync(r, &req, &req.Async)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpSnapshotCreate, domain: domain, async: async, status: http.StatusCreated},
		func(ctx context.Context, id string) (any, error) {
			res, err := s.drv.CreateSnapshot(ctx, domain, driver.CreateRequest{
				XML: req.XML, Flags: driver.CreateFlags(req.Flags), Quiesce: driver.QuiesceMode(req.Quiesce), OpID: id,
			})
			if err != nil {
				return nil, err
			}
			resp := api.CreateSnapshotResponse{
				Name: res.Name, XML: res.XML, Operation: id, Mode: string(res.Mode), Quiesced: res.Quiesced,
				Disks: outcomes(res.Disks), Indications: indications(res.Indications),
				Timings: api.Timings{TotalMS: ms(res.Total), SwitchMS: ms(res.Switch), FreezeMS: ms(res.Freeze)},
			}
			if resp.Disks == nil {
				resp.Disks = []api.DiskOutcome{}
			}
			return resp, nil
		})
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	recs, err := s.drv.Snapshots(domain)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	cur, _ := s.drv.Store().Current(domain)
	all := snapshotsOf(recs, cur, false)
	q := r.URL.Query()
	out := api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, sn := range all {
		if q.Has("roots") && sn.Parent != "" || q.Has("leaves") && len(sn.Children) > 0 {
			continue
		}
		out.Snapshots = append(out.Snapshots, sn)
	}
	if q.Has("tree") {
		out.Tree = tree(all)
	}
	writeJSON(w, http.StatusOK, out)
}

// snapshotsOf converts records, oldest first, filling in children.
func snapshotsOf(recs []driver.SnapshotRecord, current string, withXML bool) []api.Snapshot {
	children := map[string][]string{}
	for _, rec := range recs {
		if rec.Parent != "" {
			children[rec.Parent] = append(children[rec.Parent], rec.Name)
		}
	}
	out := make([]api.Snapshot, len(recs))
	for i, rec := range recs {
		out[i] = api.Snapshot{
			Name: rec.Name, Description: rec.Description, CreationTime: time.Unix(rec.CreationTime, 0).UTC(),
			State: rec.State, Parent: rec.Parent, Current: rec.Name == current, Children: children[rec.Name],
			MergeInterrupted: mergeInterruption(rec.MergeInterrupted),
		}
		if out[i].Children == nil {
			out[i].Children = []string{}
		}
		if withXML {
			out[i].XML = rec.XML
		}
	}
	return out
}

func tree(all []api.Snapshot) []*api.SnapshotNode {
	nodes := map[string]*api.SnapshotNode{}
	for _, sn := range all {
		nodes[sn.Name] = &api.SnapshotNode{Name: sn.Name, Children: []*api.SnapshotNode{}}
	}
	var roots []*api.SnapshotNode
	for _, sn := range all {
		n := nodes[sn.Name]
		if p, ok := nodes[sn.Parent]; ok {
			p.Children = append(p.Children, n)
		} else {
			roots = append(roots, n)
		}
	}
	return roots
}

func (s *Server) snapshotResponse(w http.ResponseWriter, domain string, rec driver.SnapshotRecord, err error) {
	if err != nil {
		s.writeErr(w, err)
		return
	}
	sn, err := s.snapshotOf(domain, rec.Name)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, sn)
}

// snapshotOf is one snapshot with its children, parent and XML.
func (s *Server) snapshotOf(domain, name string) (api.Snapshot, error) {
	recs, err := s.drv.Snapshots(domain)
	if err != nil {
		return api.Snapshot{}, err
	}
	cur, _ := s.drv.Store().Current(domain)
	for _, sn := range snapshotsOf(recs, cur, true) {
		if sn.Name == name {
			return sn, nil
		}
	}
	return api.Snapshot{}, fmt.Errorf("%w: snapshot '%s' vanished", driver.ErrNoSnapshot, name)
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	rec, err := s.drv.Snapshot(domain, r.PathValue("snap"))
	s.snapshotResponse(w, domain, rec, err)
}

func (s *Server) getCurrent(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	rec, err := s.drv.Current(domain)
	s.snapshotResponse(w, domain, rec, err)
}

func (s *Server) setCurrent(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	var req api.SetCurrentRequest
	async, err := decodeAsync(r, &req, &req.Async)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpSnapshotCurrent, domain: domain, async: async, status: http.StatusOK},
		func(ctx context.Context, _ string) (any, error) {
			if err := s.drv.SetCurrent(ctx, domain, req.Name); err != nil {
				return nil, err
			}
			rec, err := s.drv.Current(domain)
			if err != nil {
				return nil, err
			}
			return s.snapshotOf(domain, rec.Name)
		})
}

// deleteSnapshot deletes a snapshot as virDomainSnapshotDelete does:
// the flags by name (?children, ?metadata-only, ?children-only) or as
// an integer (?flags=N), ?bandwidth=BYTES_PER_SECOND, ?async. Any other
// parameter is refused, so that a misspelt ?metadata-only does not
// merge. The answer is 200 with the DeleteSnapshotResponse.
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	domain, name := r.PathValue("name"), r.PathValue("snap")
	req, err := deleteRequest(r.URL.Query())
	if err != nil {
		s.writeErr(w, err)
		return
	}
	async, err := asyncOf(r, false)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpSnapshotDelete, domain: domain, async: async, status: http.StatusOK},
		func(ctx context.Context, id string) (any, error) {
			req.OpID = id
			res, err := s.drv.DeleteSnapshot(ctx, domain, name, req)
			if err != nil {
				return nil, err
			}
			return deleteResponse(res, id), nil
		})
}

// deleteRequest reads a delete's query parameters.
func deleteRequest(q url.Values) (driver.DeleteRequest, error) {
	var req driver.DeleteRequest
	var flags api.DeleteFlags
	for key, vs := range q {
		if f, ok := deleteFlagNamed(key); ok {
			set, err := parseBool(key, vs)
			if err != nil {
				return req, err
			}
			if set {
				flags |= f
			}
			continue
		}
		switch key {
		case api.QueryAsync: // asyncOf reads it
		case api.QueryFlags, api.QueryBandwidth:
			if len(vs) != 1 {
				return req, fmt.Errorf("%w: %s given %d times", errBadRequest, key, len(vs))
			}
			if key == api.QueryFlags {
				n, err := strconv.ParseUint(vs[0], 10, 32)
				if err != nil {
					return req, fmt.Errorf("%w: flags must be an unsigned integer, not %q", errBadRequest, vs[0])
				}
				flags |= api.DeleteFlags(n)
				continue
			}
			n, err := strconv.ParseInt(vs[0], 10, 64)
			if err != nil || n < 0 {
				return req, fmt.Errorf("%w: bandwidth must be a number of bytes per second, not %q", errBadRequest, vs[0])
			}
			req.Bandwidth = n
		default:
			return req, fmt.Errorf("%w: unknown parameter %q of a snapshot delete", errBadRequest, key)
		}
	}
	if unknown := flags &^ api.KnownDeleteFlags; unknown != 0 {
		return req, fmt.Errorf("%w: unknown delete flag bits %#x", errBadRequest, uint32(unknown))
	}
	req.Flags = driver.DeleteFlags(flags)
	return req, nil
}

// deleteFlagNamed is the flag whose query parameter is name.
func deleteFlagNamed(name string) (api.DeleteFlags, bool) {
	for f := api.DeleteFlags(1); f <= api.KnownDeleteFlags; f <<= 1 {
		if f.String() == name {
			return f, true
		}
	}
	return 0, false
}

func (s *Server) fsFreeze(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	var req api.FreezeRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			s.writeErr(w, err)
			return
		}
	}
	var hold time.Duration
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d <= 0 {
			s.writeErr(w, fmt.Errorf("%w: timeout must be a positive duration such as 30s", errBadRequest))
			return
		}
		hold = d
	}
	async, err := asyncOf(r, req.Async)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpFSFreeze, domain: domain, async: async, status: http.StatusOK},
		func(ctx context.Context, _ string) (any, error) {
			n, err := s.drv.FSFreeze(ctx, domain, req.Mountpoints, hold)
			return api.FreezeResponse{Count: n}, err
		})
}

func (s *Server) fsThaw(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	async, err := asyncOf(r, false)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpFSThaw, domain: domain, async: async, status: http.StatusOK},
		func(ctx context.Context, _ string) (any, error) {
			n, err := s.drv.FSThaw(ctx, domain)
			return api.FreezeResponse{Count: n}, err
		})
}

func (s *Server) fsStatus(w http.ResponseWriter, r *http.Request) {
	fi, err := s.drv.FSStatus(r.Context(), r.PathValue("name"))
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, freezeInfo(fi))
}

func (s *Server) getOperation(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if op, ok := s.ops.get(id); ok {
		s.withProgress(&op)
		writeJSON(w, http.StatusOK, op)
		return
	}
	// Operations from before a restart are in the journal.
	rec, err := s.drv.Store().Op(id)
	if err != nil {
		s.writeErr(w, fmt.Errorf("%w: %s", errNoOperation, id))
		return
	}
	op := api.Operation{ID: rec.ID, Kind: opKind(rec.Kind), Domain: rec.Domain, Started: rec.Started, Ended: rec.Updated}
	switch phase := rec.Phase(); {
	case phase.Active():
		op.State, op.Ended = api.OpRunning, time.Time{}
		s.withProgress(&op)
	case rec.Merge != nil:
		// A delete: its result or error, as the delete itself answered.
		res, err := rec.DeleteOutcome()
		if err != nil {
			op.State = api.OpFailed
			_, info := errorInfo(err)
			op.Error = &info
			break
		}
		op.State = api.OpSucceeded
		op.Result, _ = json.Marshal(deleteResponse(res, rec.ID))
	case phase == transaction.PhaseDone:
		op.State = api.OpSucceeded
	default:
		op.State = api.OpFailed
		info := api.ErrorInfo{Code: api.CodeOperationFailed, Message: rec.Error}
		if rec.Plan != nil {
			info.Details = &api.ErrorDetails{Operation: rec.ID, Disks: outcomes(rec.Plan.Outcomes())}
		}
		op.Error = &info
	}
	writeJSON(w, http.StatusOK, op)
}
