package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client speaks the API over a unix socket.
type Client struct {
	socket string
	hc     *http.Client
	// OperationIDs, if set, names every mutating request that names no
	// operation itself. A request under an operation id is sent once
	// more, under the same id, when the connection drops before its
	// answer: the daemon answers a retry with the first one's outcome
	// and never runs it twice.
	OperationIDs func() string
}

// NewClient returns a client for the daemon socket at path.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is an error answer of the daemon.
type Error struct {
	Status int
	Info   ErrorInfo
}

func (e *Error) Error() string { return e.Info.Message }

// NoAnswerError is a request whose context ended before the daemon's
// answer began: the daemon may be slow, stuck or not there at all, as
// when systemd holds the socket of a daemon that failed to start and
// the kernel queues the connection that nobody accepts.
type NoAnswerError struct {
	Socket  string
	Request string // "GET /v1/domains"
	Err     error  // the context's cause
}

func (e *NoAnswerError) Error() string {
	return fmt.Sprintf("qsnapd at %s: no answer to %s: %v", e.Socket, e.Request, e.Err)
}

func (e *NoAnswerError) Unwrap() error { return e.Err }

// Code is the error's code, or "" for other errors.
func Code(err error) string {
	if e := (*Error)(nil); errors.As(err, &e) {
		return e.Info.Code
	}
	return ""
}

func (c *Client) do(ctx context.Context, method, path string, hdr http.Header, body, out any) error {
	var buf []byte
	if body != nil {
		var err error
		if buf, err = json.Marshal(body); err != nil {
			return err
		}
	}
	if hdr == nil {
		hdr = http.Header{}
	}
	// A cancel names its operation in the path: it is no operation.
	if method != http.MethodGet && !strings.HasPrefix(path, "/v1/operations/") && hdr.Get(OperationHeader) == "" && c.OperationIDs != nil {
		hdr.Set(OperationHeader, c.OperationIDs())
	}
	resp, data, err := c.send(ctx, method, path, hdr, buf)
	if err != nil && hdr.Get(OperationHeader) != "" && ctx.Err() == nil {
		// Lost before the answer: the same request under the same id.
		resp, data, err = c.send(ctx, method, path, hdr, buf)
	}
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return replyError(resp, data)
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("qsnapd at %s: decode reply: %w", c.socket, err)
	}
	return nil
}

// send sends one request and reads its whole answer.
func (c *Client) send(ctx context.Context, method, path string, hdr http.Header, body []byte) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://qsnapd"+path, rd)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil && ctx.Err() != nil {
		return nil, nil, &NoAnswerError{Socket: c.socket, Request: method + " " + path, Err: context.Cause(ctx)}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("qsnapd at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("qsnapd at %s: read reply: %w", c.socket, err)
	}
	return resp, data, nil
}

// replyError is the daemon's error answer, whose body is data.
func replyError(resp *http.Response, data []byte) error {
	var eb ErrorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
		eb.Error = ErrorInfo{Code: CodeInternalError, Message: fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(data))}
	}
	return &Error{Status: resp.StatusCode, Info: eb.Error}
}

func domainPath(name string, rest ...string) string {
	p := "/v1/domains/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// Version asks the daemon's version.
func (c *Client) Version(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.do(ctx, http.MethodGet, "/v1/version", nil, nil, &v)
	return v, err
}

// Domains lists the registered domains.
func (c *Client) Domains(ctx context.Context) ([]Domain, error) {
	var out []Domain
	err := c.do(ctx, http.MethodGet, "/v1/domains", nil, nil, &out)
	return out, err
}

// Domain returns one domain.
func (c *Client) Domain(ctx context.Context, name string) (Domain, error) {
	var out Domain
	err := c.do(ctx, http.MethodGet, domainPath(name), nil, nil, &out)
	return out, err
}

// Attach registers and connects a domain.
func (c *Client) Attach(ctx context.Context, req AttachRequest) (Domain, error) {
	var out Domain
	err := c.do(ctx, http.MethodPost, "/v1/domains", nil, req, &out)
	return out, err
}

// Detach forgets a domain.
func (c *Client) Detach(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, domainPath(name), nil, nil, nil)
}

// Disks lists a domain's disks.
func (c *Client) Disks(ctx context.Context, name string) ([]Disk, error) {
	var out []Disk
	err := c.do(ctx, http.MethodGet, domainPath(name, "disks"), nil, nil, &out)
	return out, err
}

// opHeader names the operation, if opID is set, and asks for an
// asynchronous answer with async.
func opHeader(opID string, async bool) http.Header {
	hdr := http.Header{}
	if opID != "" {
		hdr.Set(OperationHeader, opID)
	}
	if async {
		hdr.Set(PreferHeader, PreferAsync)
	}
	return hdr
}

// CreateSnapshot takes a snapshot and waits for it; opID, if set, names
// the operation.
func (c *Client) CreateSnapshot(ctx context.Context, domain string, req CreateSnapshotRequest, opID string) (CreateSnapshotResponse, error) {
	var out CreateSnapshotResponse
	req.Async = false
	err := c.do(ctx, http.MethodPost, domainPath(domain, "snapshots"), opHeader(opID, false), req, &out)
	return out, err
}

// CreateSnapshotAsync starts a snapshot and returns its operation,
// running; Operation and WaitOperation read how it ends, with a
// CreateSnapshotResponse as its result.
func (c *Client) CreateSnapshotAsync(ctx context.Context, domain string, req CreateSnapshotRequest, opID string) (Operation, error) {
	var out Operation
	req.Async = false // the header asks
	err := c.do(ctx, http.MethodPost, domainPath(domain, "snapshots"), opHeader(opID, true), req, &out)
	return out, err
}

// Snapshots lists a domain's snapshots; query may hold tree, roots,
// leaves, limit and after (QueryTree and the others).
func (c *Client) Snapshots(ctx context.Context, domain string, query url.Values) (SnapshotList, error) {
	var out SnapshotList
	p := domainPath(domain, "snapshots")
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	err := c.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
}

// SnapshotPages lists a domain's snapshots page by page, limit at a
// time (1 to MaxPageLimit), in the listing's order; query may hold
// roots or leaves, not tree or after. It stops at the first error,
// which it yields: a snapshot that ends a page and is deleted before
// the next page is read ends the listing with no-domain-snapshot.
func (c *Client) SnapshotPages(ctx context.Context, domain string, query url.Values, limit int) iter.Seq2[SnapshotList, error] {
	return func(yield func(SnapshotList, error) bool) {
		q := url.Values{}
		for k, v := range query {
			q[k] = v
		}
		q.Set(QueryLimit, strconv.Itoa(limit))
		q.Del(QueryAfter)
		for {
			page, err := c.Snapshots(ctx, domain, q)
			if err == nil && page.Next != "" && (len(page.Snapshots) == 0 || page.Next == q.Get(QueryAfter)) {
				err = fmt.Errorf("qsnapd at %s: the page after %q names %q as next: it would never end", c.socket, q.Get(QueryAfter), page.Next)
			}
			if !yield(page, err) || err != nil || page.Next == "" {
				return
			}
			q.Set(QueryAfter, page.Next)
		}
	}
}

// AllSnapshots lists a domain's snapshots as Snapshots does, reading
// them limit at a time with SnapshotPages: a long listing does not
// hold the daemon in one request.
func (c *Client) AllSnapshots(ctx context.Context, domain string, query url.Values, limit int) ([]Snapshot, error) {
	out := []Snapshot{}
	for page, err := range c.SnapshotPages(ctx, domain, query, limit) {
		if err != nil {
			return nil, err
		}
		out = append(out, page.Snapshots...)
	}
	return out, nil
}

// Snapshot returns one snapshot with its XML.
func (c *Client) Snapshot(ctx context.Context, domain, name string) (Snapshot, error) {
	var out Snapshot
	err := c.do(ctx, http.MethodGet, domainPath(domain, "snapshots", name), nil, nil, &out)
	return out, err
}

// Current returns the current snapshot.
func (c *Client) Current(ctx context.Context, domain string) (Snapshot, error) {
	var out Snapshot
	err := c.do(ctx, http.MethodGet, domainPath(domain, "snapshots", "current"), nil, nil, &out)
	return out, err
}

// SetCurrent makes a snapshot current.
func (c *Client) SetCurrent(ctx context.Context, domain, name string) (Snapshot, error) {
	var out Snapshot
	err := c.do(ctx, http.MethodPut, domainPath(domain, "snapshots", "current"), nil, SetCurrentRequest{Name: name}, &out)
	return out, err
}

// DeleteSnapshot deletes a snapshot, merging its overlays unless
// opts.Flags has DeleteMetadataOnly, and waits for the end.
func (c *Client) DeleteSnapshot(ctx context.Context, domain, name string, opts DeleteOptions) (DeleteSnapshotResponse, error) {
	var out DeleteSnapshotResponse
	err := c.do(ctx, http.MethodDelete, deletePath(domain, name, opts), opHeader(opts.OpID, false), nil, &out)
	return out, err
}

// DeleteSnapshotAsync starts a snapshot delete and returns its
// operation, running; its result is a DeleteSnapshotResponse.
func (c *Client) DeleteSnapshotAsync(ctx context.Context, domain, name string, opts DeleteOptions) (Operation, error) {
	var out Operation
	err := c.do(ctx, http.MethodDelete, deletePath(domain, name, opts), opHeader(opts.OpID, true), nil, &out)
	return out, err
}

func deletePath(domain, name string, opts DeleteOptions) string {
	p := domainPath(domain, "snapshots", name)
	if q := opts.query(); q != "" {
		p += "?" + q
	}
	return p
}

// FSFreeze freezes the guest's filesystems.
func (c *Client) FSFreeze(ctx context.Context, domain string, req FreezeRequest) (FreezeResponse, error) {
	var out FreezeResponse
	err := c.do(ctx, http.MethodPost, domainPath(domain, "fsfreeze"), nil, req, &out)
	return out, err
}

// FSThaw thaws the guest's filesystems.
func (c *Client) FSThaw(ctx context.Context, domain string) (FreezeResponse, error) {
	var out FreezeResponse
	err := c.do(ctx, http.MethodPost, domainPath(domain, "fsthaw"), nil, nil, &out)
	return out, err
}

// FSStatus reports the frozen state.
func (c *Client) FSStatus(ctx context.Context, domain string) (FreezeInfo, error) {
	var out FreezeInfo
	err := c.do(ctx, http.MethodGet, domainPath(domain, "fsfreeze"), nil, nil, &out)
	return out, err
}

func opPath(id string) string { return "/v1/operations/" + url.PathEscape(id) }

// Operation returns an operation: its progress while it runs, its
// result or error once it ended.
func (c *Client) Operation(ctx context.Context, id string) (Operation, error) {
	var out Operation
	err := c.do(ctx, http.MethodGet, opPath(id), nil, nil, &out)
	return out, err
}

// CancelOperation asks a running operation to stop before its point of
// no return, and returns it as it is then: still running, since it ends
// once its jobs are cancelled; it then fails with operation-aborted.
// Past that point the error's code is operation-invalid (409), and for
// an unknown id no-operation (404).
func (c *Client) CancelOperation(ctx context.Context, id string) (Operation, error) {
	var out Operation
	err := c.do(ctx, http.MethodDelete, opPath(id), nil, nil, &out)
	return out, err
}

// WaitOperation reads an operation every interval until it is no longer
// running, and returns it as it ended. Each reading, the last one
// included, goes to seen if it is set. It returns early only when ctx
// ends or a reading fails.
func (c *Client) WaitOperation(ctx context.Context, id string, interval time.Duration, seen func(Operation)) (Operation, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		op, err := c.Operation(ctx, id)
		if err != nil {
			return op, err
		}
		if seen != nil {
			seen(op)
		}
		if op.State != OpRunning {
			return op, nil
		}
		select {
		case <-ctx.Done():
			return op, ctx.Err()
		case <-t.C:
		}
	}
}
