package main

import (
	"cmp"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/internal/testing/snaptree"
)

// listing is a generated tree as the daemon lists it: in creation
// order, with children and current.
func listing(n int) []api.Snapshot {
	snaps, current := snaptree.Generate(n)
	slices.SortFunc(snaps, func(a, b snaptree.Snapshot) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), strings.Compare(a.Name, b.Name))
	})
	children := map[string][]string{}
	for _, s := range snaps {
		children[s.Parent] = append(children[s.Parent], s.Name)
	}
	out := make([]api.Snapshot, len(snaps))
	for i, s := range snaps {
		out[i] = api.Snapshot{Name: s.Name, Description: s.Description, CreationTime: time.Unix(s.Created, 0).UTC(),
			State: "disk-snapshot", Parent: s.Parent, Current: s.Name == current, Children: children[s.Name]}
		if out[i].Children == nil {
			out[i].Children = []string{}
		}
	}
	return out
}

// listReply answers as the daemon does: the filters, then the page
// after ?after of at most ?limit snapshots, with next; without paging,
// as a daemon that does not page, the whole listing.
func listReply(t *testing.T, all []api.Snapshot, paging bool) func([]fakeRequest) fakeReply {
	return func(reqs []fakeRequest) fakeReply {
		q, err := url.ParseQuery(reqs[len(reqs)-1].query)
		if err != nil {
			t.Error(err)
		}
		var out api.SnapshotList
		started := !q.Has(api.QueryAfter)
		limit, _ := strconv.Atoi(q.Get(api.QueryLimit))
		if !paging {
			limit = 0
		}
		for _, s := range all {
			if !started {
				started = s.Name == q.Get(api.QueryAfter)
				continue
			}
			if q.Has(api.QueryRoots) && s.Parent != "" || q.Has(api.QueryLeaves) && len(s.Children) > 0 {
				continue
			}
			if limit > 0 && len(out.Snapshots) == limit {
				out.Next = out.Snapshots[limit-1].Name
				break
			}
			out.Snapshots = append(out.Snapshots, s)
		}
		if out.Snapshots == nil {
			out.Snapshots = []api.Snapshot{}
		}
		if q.Has(api.QueryTree) {
			out.Tree = api.SnapshotTree(out.Snapshots)
		}
		b, err := json.Marshal(out)
		if err != nil {
			t.Error(err)
		}
		return fakeReply{body: string(b)}
	}
}

// TestSnapshotListPages: snapshot-list reads a long listing 500 at a
// time, following next, and prints it as it prints the same listing
// read at once (as from a daemon that does not page), every way it
// prints one; its tree is the daemon's.
func TestSnapshotListPages(t *testing.T) {
	all := listing(1234)
	paged := newFakeDaemon(t, map[string]fakeReply{"GET /v1/domains/vm/snapshots": {fn: listReply(t, all, true)}})
	once := newFakeDaemon(t, map[string]fakeReply{"GET /v1/domains/vm/snapshots": {fn: listReply(t, all, false)}})
	var tree strings.Builder
	roots := api.SnapshotTree(all)
	sortTree(roots)
	if err := writeTree(&tree, roots); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts  []string
		pages int
	}{
		{nil, 3}, {[]string{"--parent"}, 3}, {[]string{"--name"}, 3}, {[]string{"--topological", "--name"}, 3},
		{[]string{"--tree"}, 3}, {[]string{"--tree", "--topological"}, 3}, {[]string{"--roots"}, 1},
		{[]string{"--leaves", "--name"}, 1}, {[]string{"--roots", "--leaves"}, 1}, {[]string{"--json"}, 3},
		{[]string{"--tree", "--json"}, 3},
	} {
		t.Run(strings.Join(tc.opts, " "), func(t *testing.T) {
			argv := append([]string{"snapshot-list", "vm"}, tc.opts...)
			t.Setenv(socketEnv, once.socket)
			wantCode, wantOut, wantErr := runCLI(t, argv...)
			t.Setenv(socketEnv, paged.socket)
			before := len(paged.requests())
			code, out, errOut := runCLI(t, argv...)
			if code != 0 || code != wantCode || out != wantOut || errOut != wantErr {
				t.Errorf("by pages: exit %d, %d bytes out, stderr %q; at once: exit %d, %d bytes out, stderr %q",
					code, len(out), errOut, wantCode, len(wantOut), wantErr)
			}
			reqs := paged.requests()[before:]
			if len(reqs) != tc.pages {
				t.Fatalf("%d requests, want %d pages", len(reqs), tc.pages)
			}
			for i, r := range reqs {
				q, _ := url.ParseQuery(r.query)
				if q.Get(api.QueryLimit) != "500" || q.Has(api.QueryTree) || (i == 0) == q.Has(api.QueryAfter) {
					t.Errorf("request %d: ?%s", i, r.query)
				}
			}
			if slices.Contains(tc.opts, "--tree") && !slices.Contains(tc.opts, "--json") && !slices.Contains(tc.opts, "--topological") && out != tree.String() {
				t.Errorf("the tree from pages is not the daemon's: %d bytes, want %d", len(out), tree.Len())
			}
		})
	}
}
