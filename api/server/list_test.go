package server_test

import (
	"cmp"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/api/server"
	"github.com/qsnapd/qsnapd/internal/testing/snaptree"
)

// checkSnapshotPaging: a generated tree (a long chain with branches
// and other roots, redefined through the API) with a snapshot taken on
// its current one lists the same page by page, with every filter and
// page size, as in one request, in creation order; the tree built from
// the pages is ?tree's; a lookup shows what the listing shows, with the
// XML; bad paging parameters are refused, saying why.
func checkSnapshotPaging(t *testing.T) {
	d := startDaemon(t, server.Access{})
	d.vm("vm1", 1)
	snaps, current := snaptree.Generate(140)
	for _, s := range snaps {
		flags := api.FlagRedefine
		if s.Name == current {
			flags |= api.FlagCurrent
		}
		if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{XML: s.RedefineXML(), Flags: flags}, ""); err != nil {
			t.Fatalf("redefine %s: %v", s.Name, err)
		}
	}
	xml := "<domainsnapshot><name>taken</name></domainsnapshot>"
	if _, err := d.client.CreateSnapshot(ctx(t), "vm1", api.CreateSnapshotRequest{XML: xml, Flags: api.FlagDiskOnly}, ""); err != nil {
		t.Fatal(err)
	}

	whole, err := d.client.Snapshots(ctx(t), "vm1", nil)
	if err != nil {
		t.Fatal(err)
	}
	all := whole.Snapshots
	parents := map[string]string{"taken": current}
	for _, s := range snaps {
		parents[s.Name] = s.Parent
	}
	children := map[string][]string{}
	for _, s := range all {
		if s.Parent != parents[s.Name] {
			t.Errorf("%s: parent %q, want %q", s.Name, s.Parent, parents[s.Name])
		}
		children[s.Parent] = append(children[s.Parent], s.Name)
	}
	for _, s := range all {
		if !slices.Equal(s.Children, children[s.Name]) && len(s.Children)+len(children[s.Name]) > 0 || s.Current != (s.Name == "taken") {
			t.Errorf("%s: children %q, current %v; want %q, %v", s.Name, s.Children, s.Current, children[s.Name], s.Name == "taken")
		}
	}
	if len(all) != len(snaps)+1 || whole.Next != "" || !slices.IsSortedFunc(all, func(a, b api.Snapshot) int {
		return cmp.Or(a.CreationTime.Compare(b.CreationTime), strings.Compare(a.Name, b.Name))
	}) {
		t.Fatalf("%d snapshots, next %q, in creation order: want %d, none, yes", len(all), whole.Next, len(snaps)+1)
	}

	for _, filter := range []url.Values{{}, {api.QueryRoots: {""}}, {api.QueryLeaves: {"true"}}, {api.QueryRoots: {""}, api.QueryLeaves: {""}}} {
		want, err := d.client.Snapshots(ctx(t), "vm1", filter)
		if err != nil {
			t.Fatal(err)
		}
		for _, limit := range []int{1, 9, 500} {
			got, err := d.client.AllSnapshots(ctx(t), "vm1", filter, limit)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want.Snapshots) {
				t.Errorf("%v by %d: the pages list %d snapshots, one request %d", filter, limit, len(got), len(want.Snapshots))
			}
		}
	}
	page, err := d.client.Snapshots(ctx(t), "vm1", url.Values{api.QueryLimit: {"9"}, api.QueryAfter: {all[20].Name}})
	if err != nil || len(page.Snapshots) != 9 || page.Snapshots[0].Name != all[21].Name || page.Next != all[29].Name {
		t.Errorf("the page after %s: %+v, %v; want %s to %s, next %s", all[20].Name, page, err, all[21].Name, all[29].Name, all[29].Name)
	}

	tree, err := d.client.Snapshots(ctx(t), "vm1", url.Values{api.QueryTree: {""}})
	if err != nil {
		t.Fatal(err)
	}
	if len(tree.Tree) != 3 || !reflect.DeepEqual(tree.Tree, api.SnapshotTree(all)) || !reflect.DeepEqual(tree.Snapshots, all) {
		t.Errorf("?tree: %d roots; want the 3 of the pages' tree", len(tree.Tree))
	}

	for _, name := range []string{"taken", all[len(all)/2].Name} {
		i := slices.IndexFunc(all, func(s api.Snapshot) bool { return s.Name == name })
		one, err := d.client.Snapshot(ctx(t), "vm1", name)
		if err != nil || !strings.Contains(one.XML, "<name>"+name+"</name>") {
			t.Fatalf("%s: %+v, %v", name, one, err)
		}
		one.XML = ""
		if !reflect.DeepEqual(one, all[i]) {
			t.Errorf("%s alone: %+v; listed: %+v", name, one, all[i])
		}
	}
	if cur, err := d.client.Current(ctx(t), "vm1"); err != nil || cur.Name != "taken" || cur.Parent != current {
		t.Errorf("current: %+v, %v", cur, err)
	}

	status := map[string]int{api.CodeInvalidArg: http.StatusBadRequest, api.CodeNoDomainSnapshot: http.StatusNotFound}
	for _, tc := range []struct{ query, code, says string }{
		{"limit=0", api.CodeInvalidArg, "limit must be a number of snapshots from 1 to 10000, not \"0\""},
		{"limit=-3", api.CodeInvalidArg, "limit must be"},
		{"limit=ten", api.CodeInvalidArg, "limit must be"},
		{"limit=10001", api.CodeInvalidArg, "limit must be"},
		{"limit=", api.CodeInvalidArg, "limit must be"},
		{"limit=1&limit=2", api.CodeInvalidArg, "limit given 2 times"},
		{"after=", api.CodeInvalidArg, "after must name a snapshot"},
		{"after=s00001&after=s00002", api.CodeInvalidArg, "after given 2 times"},
		{"tree&limit=5", api.CodeInvalidArg, "the tree cannot be paged"},
		{"tree&after=s00001", api.CodeInvalidArg, "the tree cannot be paged"},
		{"after=nope&limit=5", api.CodeNoDomainSnapshot, "after: domain vm1 has no snapshot named 'nope'"},
		{"leaves&after=nope", api.CodeNoDomainSnapshot, "has no snapshot named 'nope'"},
	} {
		got, eb := raw(t, d.ro, http.MethodGet, "/v1/domains/vm1/snapshots?"+tc.query, nil, nil)
		if want := status[tc.code]; got != want || eb.Error.Code != tc.code || !strings.Contains(eb.Error.Message, tc.says) {
			t.Errorf("?%s: %d %s %q; want %d %s saying %q", tc.query, got, eb.Error.Code, eb.Error.Message, want, tc.code, tc.says)
		}
	}
}
