// Queries of the block graph, in QEMU 7.2's reply shapes.

package qmpfake

import (
	"cmp"
	"encoding/json"
	"sort"
	"strings"
)

// describe returns n's filename and open options. A qcow2 node whose
// backing node is not the file its header names (as after
// blockdev-add with "backing": null) gets a json: filename, as in QEMU.
func (n *node) describe() (string, map[string]any) {
	if n.file == nil {
		return n.path, map[string]any{"driver": "file", "filename": n.path}
	}
	opts := map[string]any{"driver": n.drv, "file": map[string]any{"driver": "file", "filename": n.file.path}}
	var bname string
	var bopts map[string]any
	if n.backing != nil {
		bname, bopts = n.backing.describe()
	}
	if n.drv != "qcow2" || n.autoBacking == bname {
		return n.file.path, opts
	}
	opts["backing"] = nil
	if n.backing != nil {
		opts["backing"] = bopts
	}
	return "json:" + qemuJSON(opts), opts
}

func (n *node) filename() string { name, _ := n.describe(); return name }

// qemuJSON formats like QEMU's qobject_to_json: sorted keys, ": " and ", ".
func qemuJSON(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		b, _ := json.Marshal(v)
		return string(b)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = qemuJSON(k) + ": " + qemuJSON(m[k])
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

type imageInfo struct {
	Filename              string     `json:"filename"`
	Format                string     `json:"format"`
	VirtualSize           int64      `json:"virtual-size"`
	ActualSize            int64      `json:"actual-size"`
	ClusterSize           int64      `json:"cluster-size,omitempty"`
	DirtyFlag             bool       `json:"dirty-flag"`
	BackingFilename       string     `json:"backing-filename,omitempty"`
	FullBackingFilename   string     `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string     `json:"backing-filename-format,omitempty"`
	BackingImage          *imageInfo `json:"backing-image,omitempty"`
}

type cacheInfo struct {
	Writeback bool `json:"writeback"`
	Direct    bool `json:"direct"`
	NoFlush   bool `json:"no-flush"`
}

type nodeInfo struct {
	File             string     `json:"file"`
	NodeName         string     `json:"node-name"`
	Ro               bool       `json:"ro"`
	Drv              string     `json:"drv"`
	BackingFile      string     `json:"backing_file,omitempty"`
	BackingFileDepth int        `json:"backing_file_depth"`
	Encrypted        bool       `json:"encrypted"`
	DetectZeroes     string     `json:"detect_zeroes"`
	Bps              int64      `json:"bps"`
	BpsRd            int64      `json:"bps_rd"`
	BpsWr            int64      `json:"bps_wr"`
	Iops             int64      `json:"iops"`
	IopsRd           int64      `json:"iops_rd"`
	IopsWr           int64      `json:"iops_wr"`
	WriteThreshold   int64      `json:"write_threshold"`
	Cache            cacheInfo  `json:"cache"`
	Image            *imageInfo `json:"image"`
}

func (n *node) image(nested bool) *imageInfo {
	img := &imageInfo{Filename: n.filename(), Format: n.drv, VirtualSize: n.size, ActualSize: n.size}
	if n.file != nil {
		img.ActualSize = n.file.size
	}
	if n.drv == "qcow2" {
		img.ClusterSize = qcow2Cluster
	}
	if n.hdrBacking != "" {
		img.BackingFilename, img.FullBackingFilename = n.hdrBacking, n.fullBacking()
		img.BackingFilenameFormat = n.hdrBackingFmt
	}
	if nested && n.backing != nil {
		img.BackingImage = n.backing.image(true)
	}
	return img
}

// info describes n as query-block (nested) and query-named-block-nodes do.
func (n *node) info(nested bool) *nodeInfo {
	in := &nodeInfo{File: n.filename(), NodeName: n.name, Ro: n.ro, Drv: n.drv,
		DetectZeroes: "off", Cache: cacheInfo{Writeback: true}, Image: n.image(nested)}
	if n.backing != nil {
		in.BackingFile = n.backing.filename()
	}
	for m := n.backing; nested && m != nil; m = m.backing {
		in.BackingFileDepth++
	}
	return in
}

func (b *BlockLayer) queryBlock(*call) (any, error) {
	type blockInfo struct {
		Device    string    `json:"device"`
		Qdev      string    `json:"qdev,omitempty"`
		Type      string    `json:"type"`
		Removable bool      `json:"removable"`
		Locked    bool      `json:"locked"`
		IOStatus  string    `json:"io-status"`
		Inserted  *nodeInfo `json:"inserted"`
	}
	out := []blockInfo{}
	for _, d := range b.disks {
		bi := blockInfo{Device: d.Drive, Type: "unknown", IOStatus: "ok", Inserted: d.root.info(true)}
		if d.Target != "" {
			bi.Qdev = "/machine/peripheral/" + d.Target + "/virtio-backend"
		}
		out = append(out, bi)
	}
	return out, nil
}

// queryNamedBlockNodes lists every node, the newest first, as QEMU does,
// with the mirror_top filter that an active commit puts on top.
func (b *BlockLayer) queryNamedBlockNodes(x *call) (any, error) {
	var a struct {
		Flat bool `json:"flat"`
	}
	if err := x.decode(&a); err != nil {
		return nil, err
	}
	type entry struct {
		seq  int
		info *nodeInfo
	}
	var all []entry
	for _, n := range b.nodes {
		all = append(all, entry{n.seq, n.info(!a.Flat)})
	}
	for _, j := range b.jobs {
		if j.live() && j.active {
			name := j.top.filename()
			all = append(all, entry{j.filterSeq, &nodeInfo{File: name, NodeName: j.filter, Drv: "mirror_top",
				DetectZeroes: "off", Cache: cacheInfo{Writeback: true},
				Image: &imageInfo{Filename: name, Format: "mirror_top", VirtualSize: j.top.size, ClusterSize: qcow2Cluster}}})
		}
	}
	sort.Slice(all, func(i, k int) bool { return all[i].seq > all[k].seq })
	out := make([]*nodeInfo, len(all))
	for i, e := range all {
		out[i] = e.info
	}
	return out, nil
}

// blockGraph answers x-debug-query-block-graph: block backends (disks,
// and the one a commit job opens on its base), jobs and nodes.
func (b *BlockLayer) blockGraph(*call) (any, error) {
	type gnode struct {
		ID   int    `json:"id"`
		Type string `json:"type"`
		Name string `json:"name"`
	}
	type gedge struct {
		Parent     int      `json:"parent"`
		Child      int      `json:"child"`
		Name       string   `json:"name"`
		Perm       []string `json:"perm"`
		SharedPerm []string `json:"shared-perm"`
	}
	var g struct {
		Nodes []gnode `json:"nodes"`
		Edges []gedge `json:"edges"`
	}
	ids := map[any]int{}
	add := func(key any, typ, name string) {
		ids[key] = len(ids) + 1
		g.Nodes = append(g.Nodes, gnode{ids[key], typ, name})
	}
	edge := func(parent, child any, name string) {
		g.Edges = append(g.Edges, gedge{ids[parent], ids[child], name, []string{}, []string{}})
	}
	above := map[*node]string{} // active top -> its filter's key
	for _, d := range b.disks {
		add(d, "block-backend", cmp.Or(d.Drive, "/machine/peripheral/"+d.Target+"/virtio-backend"))
	}
	for _, j := range b.jobs {
		if !j.live() {
			continue
		}
		add(j, "block-job", j.id)
		add("backend:"+j.id, "block-backend", "")
		if j.active {
			add("filter:"+j.id, "block-driver", j.filter)
			above[j.top] = "filter:" + j.id
		}
	}
	for _, n := range b.nodes {
		add(n, "block-driver", n.name)
	}
	for _, d := range b.disks {
		if f, ok := above[d.root]; ok {
			edge(d, f, "root")
		} else {
			edge(d, d.root, "root")
		}
	}
	for _, j := range b.jobs {
		if !j.live() {
			continue
		}
		if j.active {
			edge("filter:"+j.id, j.top, "backing")
			edge(j, "filter:"+j.id, "main node")
		} else {
			edge(j, j.top, "main node")
		}
		edge(j, j.top, "source")
		edge(j, j.base, "target")
		for m := j.top.backing; m != nil && m != j.base; m = m.backing {
			edge(j, m, "intermediate node")
		}
		edge("backend:"+j.id, j.base, "root")
	}
	for _, n := range b.nodes {
		if n.file != nil {
			edge(n, n.file, "file")
		}
		if n.backing != nil {
			edge(n, n.backing, "backing")
		}
	}
	return g, nil
}
