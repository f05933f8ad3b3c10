package api

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
)

// Client speaks the API over a unix socket.
type Client struct {
	socket string
	hc     *http.Client
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

// Code is the error's code, or "" for other errors.
func Code(err error) string {
	if e := (*Error)(nil); errors.As(err, &e) {
		return e.Info.Code
	}
	return ""
}

func (c *Client) do(ctx context.Context, method, path string, hdr http.Header, body, out any) error {
	var rd io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://qsnapd"+path, rd)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("qsnapd at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("qsnapd at %s: read reply: %w", c.socket, err)
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			eb.Error = ErrorInfo{Code: CodeInternalError, Message: fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(data))}
		}
		return &Error{Status: resp.StatusCode, Info: eb.Error}
	}
	if out == nil || len(data) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("qsnapd at %s: decode reply: %w", c.socket, err)
	}
	return nil
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

// CreateSnapshot takes a snapshot; opID, if set, names the operation.
func (c *Client) CreateSnapshot(ctx context.Context, domain string, req CreateSnapshotRequest, opID string) (CreateSnapshotResponse, error) {
	var out CreateSnapshotResponse
	hdr := http.Header{}
	if opID != "" {
		hdr.Set(OperationHeader, opID)
	}
	err := c.do(ctx, http.MethodPost, domainPath(domain, "snapshots"), hdr, req, &out)
	return out, err
}

// Snapshots lists a domain's snapshots; query may hold tree, roots or
// leaves.
func (c *Client) Snapshots(ctx context.Context, domain string, query url.Values) (SnapshotList, error) {
	var out SnapshotList
	p := domainPath(domain, "snapshots")
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	err := c.do(ctx, http.MethodGet, p, nil, nil, &out)
	return out, err
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

// DeleteSnapshot deletes a snapshot (its metadata, with metadataOnly).
func (c *Client) DeleteSnapshot(ctx context.Context, domain, name string, metadataOnly bool) error {
	p := domainPath(domain, "snapshots", name)
	if metadataOnly {
		p += "?metadata-only=true"
	}
	return c.do(ctx, http.MethodDelete, p, nil, nil, nil)
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

// Operation returns an operation's outcome.
func (c *Client) Operation(ctx context.Context, id string) (Operation, error) {
	var out Operation
	err := c.do(ctx, http.MethodGet, "/v1/operations/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}
