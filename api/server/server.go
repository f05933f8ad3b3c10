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
	"github.com/qsnapd/qsnapd/errkind"
	"github.com/qsnapd/qsnapd/internal/version"
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
	s := &Server{drv: drv, cfg: cfg, log: log, ops: newOpRegistry(drv.Store(), cfg.OpRetention), streamsDone: make(chan struct{}),
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
		case !readOnly && !s.cfg.Access.Allows(peer):
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
	writeBody(w, status, encodeJSON(v))
}

// writeCompactJSON writes v without indentation, for an answer whose
// nesting grows with the data.
func writeCompactJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// Streamed, not buffered: a long list is megabytes. The status is
	// sent: a client that hung up has nobody to tell.
	_ = json.NewEncoder(w).Encode(v)
}

// encodeJSON is a body as writeJSON sends it.
func encodeJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	// Only the API's own types come here: they always encode.
	_ = enc.Encode(v)
	return buf.Bytes()
}

// writeBody sends a status and a JSON body, or no body if it is empty.
func writeBody(w http.ResponseWriter, status int, body []byte) {
	if len(body) > 0 {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(status)
	// The status is sent: a client that hung up has nobody to tell.
	_, _ = w.Write(body)
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
	async := *asyncField
	// How to answer is not part of what is asked: the operation's
	// fingerprint leaves it out.
	*asyncField = false
	return asyncOf(r, async)
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
	s.run(w, r, opRequest{kind: api.OpDomainAttach, domain: req.Name, request: req, async: async, status: http.StatusCreated},
		func(ctx context.Context, _ string) (any, error) {
			info, err := s.drv.AttachDomain(ctx, driver.DomainConfig{Name: req.Name, QMP: req.QMP, Agent: req.Agent, AgentChannel: req.AgentChannel})
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
	s.run(w, r, opRequest{kind: api.OpSnapshotCreate, domain: domain, request: req, async: async, status: http.StatusCreated},
		func(ctx context.Context, id string) (any, error) {
			res, err := s.drv.CreateSnapshot(ctx, domain, driver.CreateRequest{
				XML: req.XML, Flags: driver.CreateFlags(req.Flags), Quiesce: driver.QuiesceMode(req.Quiesce),
				QuiesceScope: driver.QuiesceScope(req.QuiesceScope), OpID: id,
			})
			if err != nil {
				return nil, err
			}
			resp := api.CreateSnapshotResponse{
				Name: res.Name, XML: res.XML, Operation: id, Mode: string(res.Mode), Switch: string(res.SwitchPath), Quiesced: res.Quiesced,
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

// listSnapshots lists a domain's snapshots, or a page of them
// (?limit, ?after), with the filters ?roots and ?leaves, and with ?tree
// the whole tree as well.
func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	q, tree, err := listQuery(r.URL.Query())
	if err != nil {
		s.writeErr(w, err)
		return
	}
	page, err := s.drv.ListSnapshots(r.PathValue("name"), q)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	out := api.SnapshotList{Snapshots: make([]api.Snapshot, len(page.Snapshots)), Next: page.Next}
	for i, info := range page.Snapshots {
		out.Snapshots[i] = snapshotOf(info)
	}
	if tree {
		out.Tree = api.SnapshotTree(out.Snapshots)
	}
	// Not indented: indentation doubles the time a long listing takes,
	// and a chain's tree would take space that grows with the square of
	// its depth.
	writeCompactJSON(w, http.StatusOK, out)
}

// listQuery reads a listing's query parameters: the filters (present
// means set, as they always have been), ?tree, and a page's ?limit and
// ?after, each at most once.
func listQuery(q url.Values) (driver.ListQuery, bool, error) {
	lq := driver.ListQuery{Roots: q.Has(api.QueryRoots), Leaves: q.Has(api.QueryLeaves)}
	tree := q.Has(api.QueryTree)
	for _, key := range []string{api.QueryLimit, api.QueryAfter} {
		if n := len(q[key]); n > 1 {
			return lq, false, fmt.Errorf("%w: %s given %d times", errBadRequest, key, n)
		}
	}
	if q.Has(api.QueryLimit) {
		n, err := strconv.Atoi(q.Get(api.QueryLimit))
		if err != nil || n < 1 || n > api.MaxPageLimit {
			return lq, false, fmt.Errorf("%w: limit must be a number of snapshots from 1 to %d, not %q", errBadRequest, api.MaxPageLimit, q.Get(api.QueryLimit))
		}
		lq.Limit = n
	}
	if q.Has(api.QueryAfter) {
		if lq.After = q.Get(api.QueryAfter); lq.After == "" {
			return lq, false, fmt.Errorf("%w: after must name a snapshot: the last one of the page before", errBadRequest)
		}
	}
	if tree && (lq.Limit != 0 || lq.After != "") {
		return lq, false, fmt.Errorf("%w: the tree cannot be paged: page the listing without tree; its snapshots name their parent and children", errBadRequest)
	}
	return lq, tree, nil
}

// snapshotOf is a snapshot for the wire.
func snapshotOf(info driver.SnapshotInfo) api.Snapshot {
	sn := api.Snapshot{
		Name: info.Name, Description: info.Description, CreationTime: time.Unix(info.CreationTime, 0).UTC(),
		State: info.State, Parent: info.Parent, Current: info.Current, Children: info.Children, XML: info.XML,
		MergeInterrupted: mergeInterruption(info.MergeInterrupted),
	}
	if sn.Children == nil {
		sn.Children = []string{}
	}
	return sn
}

func (s *Server) snapshotResponse(w http.ResponseWriter, info driver.SnapshotInfo, err error) {
	if err != nil {
		s.writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, snapshotOf(info))
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	info, err := s.drv.SnapshotInfo(r.PathValue("name"), r.PathValue("snap"))
	s.snapshotResponse(w, info, err)
}

func (s *Server) getCurrent(w http.ResponseWriter, r *http.Request) {
	info, err := s.drv.CurrentInfo(r.PathValue("name"))
	s.snapshotResponse(w, info, err)
}

func (s *Server) setCurrent(w http.ResponseWriter, r *http.Request) {
	domain := r.PathValue("name")
	var req api.SetCurrentRequest
	async, err := decodeAsync(r, &req, &req.Async)
	if err != nil {
		s.writeErr(w, err)
		return
	}
	s.run(w, r, opRequest{kind: api.OpSnapshotCurrent, domain: domain, request: req, async: async, status: http.StatusOK},
		func(ctx context.Context, _ string) (any, error) {
			if err := s.drv.SetCurrent(ctx, domain, req.Name); err != nil {
				return nil, err
			}
			info, err := s.drv.CurrentInfo(domain)
			if err != nil {
				return nil, err
			}
			return snapshotOf(info), nil
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
	req.Async = false // not part of what is asked
	s.run(w, r, opRequest{kind: api.OpFSFreeze, domain: domain, request: req, async: async, status: http.StatusOK},
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
	op, ok := s.operation(id)
	if !ok {
		s.writeErr(w, fmt.Errorf("%w: %s", errNoOperation, id))
		return
	}
	writeJSON(w, http.StatusOK, op)
}

// journalOperation shows an engine journal entry as an operation, and
// the status its request answered (or would have): for an operation
// no request record knows, or one whose request could not wait for its
// end (the daemon stopped, or QEMU stayed away: outcome-unknown). A
// snapshot's result is rebuilt from the journal and the metadata; its
// timings and indications are not kept.
func (s *Server) journalOperation(rec *driver.OpRecord) (api.Operation, int) {
	op := api.Operation{ID: rec.ID, Kind: opKind(rec.Kind), Domain: rec.Domain, Started: rec.Started, Ended: rec.Updated}
	switch rec.State() {
	case driver.OpUnknown:
		op.State, op.Ended = api.OpUnknown, time.Time{}
		return op, 0
	case driver.OpRunning:
		op.State, op.Ended = api.OpRunning, time.Time{}
		return op, 0
	}
	if rec.Merge != nil {
		// A delete: its result or error, as the delete itself answered.
		res, err := rec.DeleteOutcome()
		if err != nil {
			op.State = api.OpFailed
			status, info := errorInfo(err)
			op.Error = &info
			return op, status
		}
		op.State = api.OpSucceeded
		op.Result = encodeJSON(deleteResponse(res, rec.ID))
		return op, http.StatusOK
	}
	res, err := rec.CreateOutcome()
	switch {
	case err != nil:
		// A snapshot: its kind, step and every disk's outcome.
		op.State = api.OpFailed
		status, info := errorInfo(err)
		op.Error = &info
		return op, status
	case res == nil:
		op.State = api.OpFailed
		op.Error = &api.ErrorInfo{Code: api.CodeOperationFailed, Message: rec.Error}
		return op, api.ClassOf(errkind.OperationFailed).Status
	}
	op.State = api.OpSucceeded
	resp := api.CreateSnapshotResponse{Name: res.Name, Operation: rec.ID, Mode: string(res.Mode), Switch: string(res.SwitchPath),
		Quiesced: rec.Flags&driver.FlagQuiesce != 0, Disks: outcomes(res.Disks), Indications: indications(res.Indications),
		Timings: api.Timings{TotalMS: ms(res.Total), SwitchMS: ms(res.Switch)}}
	if resp.Disks == nil {
		resp.Disks = []api.DiskOutcome{}
	}
	if snap, err := s.drv.Store().Snapshot(rec.Domain, rec.Snapshot); err == nil {
		resp.XML = snap.XML
	}
	op.Result = encodeJSON(resp)
	return op, http.StatusCreated
}
