package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"libvirt.org/go/libvirtxml"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/internal/opid"
	"github.com/qsnapd/qsnapd/internal/version"
)

// command is one verb, after virsh's vshCmdDef.
type command struct {
	name    string
	summary string
	// details, if set, is the help's DESCRIPTION, one paragraph.
	details string
	opts    []option
	run     func(ctx context.Context, c *cli, a *args) error
	// changes says whether the command changes the daemon's state: then
	// it waits changeTimeout for the answer, else answerTimeout. Every
	// command says; always and never serve those whose options do not
	// decide it.
	changes func(a *args) bool
	// following, if set, says whether the command follows an operation
	// to its end: then it has no overall timeout, and handles
	// interrupts itself.
	following func(a *args) bool
}

func always(*args) bool { return true }
func never(*args) bool  { return false }

func (cmd *command) follows(a *args) bool { return cmd.following != nil && cmd.following(a) }

func (cmd *command) option(name string) *option {
	for i := range cmd.opts {
		if cmd.opts[i].name == name {
			return &cmd.opts[i]
		}
	}
	return nil
}

// lookup finds a command by name.
func lookup(name string) *command {
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd
		}
	}
	return nil
}

// maxXMLFile bounds a snapshot XML file, as virsh's VSH_MAX_XML_FILE.
const maxXMLFile = 10 << 20

var (
	optDomain   = option{name: "domain", kind: kindString, positional: true, required: true, metavar: "domain", help: "domain name"}
	optSnapshot = option{name: "snapshotname", kind: kindString, positional: true, required: true, metavar: "snapshot", help: "snapshot name"}

	// Snapshot creation flags, named as api.ParseFlags reads them.
	optsCreateFlags = []option{
		{name: "no-metadata", help: "take snapshot but create no metadata"},
		{name: "halt", help: "halt domain after snapshot is created"},
		{name: "disk-only", help: "capture disk state but not vm state"},
		{name: "reuse-external", help: "reuse any existing external files"},
		{name: "quiesce", help: "quiesce guest's file systems (quiesce mode require)"},
		{name: "atomic", help: "require atomic operation"},
		{name: "live", help: "take a live snapshot (refused: qsnapd takes disk-only snapshots)"},
		{name: "validate", help: "validate the XML strictly"},
	}
	// createFlagNames are the options that are creation flags.
	createFlagNames  = api.KnownFlags.Names()
	optsCreateCommon = []option{
		{name: "quiesce-mode", kind: kindString, metavar: "require|prefer|skip", help: "whether to freeze the guest: require, prefer (fall back to crash-consistent) or skip"},
		{name: "quiesce-scope", kind: kindString, metavar: "all|snapshot-disks", help: "what a freeze covers: every filesystem, or those on the snapshot's disks (all if they cannot be found)"},
		{name: "operation", kind: kindString, metavar: "id", help: "operation id (X-Operation-ID), to read the outcome later with 'operation'"},
	}
)

// commands are the verbs, in the order of the help.
var commands = []*command{
	{
		name: "attach", summary: "Register a domain by its QMP (and guest agent) socket",
		opts: []option{optDomain,
			{name: "qmp", kind: kindString, required: true, metavar: "path", help: "QMP socket of the QEMU process"},
			{name: "agent", kind: kindString, metavar: "path", help: "guest agent socket"},
			{name: "agent-channel", kind: kindString, metavar: "hold|per-operation",
				help: "keep the agent socket open between operations (hold, the default) or only during each (per-operation, when another manager shares it)"}},
		run:     runAttach,
		changes: always,
	},
	{
		name: "detach", summary: "Forget a domain",
		opts:    []option{optDomain},
		run:     runDetach,
		changes: always,
	},
	{
		name: "list", summary: "List domains",
		opts:    []option{{name: "name", help: "list domain names only"}},
		run:     runList,
		changes: never,
	},
	{
		name: "domblklist", summary: "List the block devices of a domain",
		opts:    []option{optDomain, {name: "details", help: "additionally display the type and device value"}},
		run:     runDomblklist,
		changes: never,
	},
	{
		name: "snapshot-create-as", summary: "Create a snapshot from a set of args",
		opts: slices.Concat([]option{optDomain,
			{name: "name", kind: kindString, positional: true, metavar: "name", help: "name of snapshot"},
			{name: "description", kind: kindString, positional: true, metavar: "description", help: "description of snapshot"},
			{name: "print-xml", help: "print XML document rather than create"}},
			optsCreateFlags, optsCreateCommon,
			[]option{{name: "diskspec", kind: kindList, argv: true, metavar: "spec",
				help: "disk attributes: disk[,snapshot=external|no][,driver=type][,stype=file|block][,file=name]"}}),
		run:     runSnapshotCreateAs,
		changes: always,
	},
	{
		name: "snapshot-create", summary: "Create a snapshot from XML",
		opts: slices.Concat([]option{optDomain,
			{name: "xmlfile", kind: kindString, positional: true, metavar: "file", help: "domain snapshot XML"},
			{name: "redefine", help: "redefine metadata for existing snapshot"},
			{name: "current", help: "with redefine, set current snapshot"}},
			optsCreateFlags, optsCreateCommon),
		run:     runSnapshotCreate,
		changes: always,
	},
	{
		name: "snapshot-list", summary: "List snapshots for a domain",
		opts: []option{optDomain,
			{name: "parent", help: "add a column showing parent snapshot"},
			{name: "roots", help: "list only snapshots without parents"},
			{name: "leaves", help: "list only snapshots without children"},
			{name: "tree", help: "list snapshots in a tree"},
			{name: "name", help: "list snapshot names only"},
			{name: "topological", help: "sort list topologically rather than by name"}},
		run:     runSnapshotList,
		changes: never,
	},
	{
		name: "snapshot-dumpxml", summary: "Dump XML for a domain snapshot",
		opts:    []option{optDomain, optSnapshot},
		run:     runSnapshotDumpxml,
		changes: never,
	},
	{
		name: "snapshot-current", summary: "Get or set the current snapshot",
		opts: []option{optDomain,
			{name: "name", help: "list the name, rather than the full xml"},
			{name: "snapshotname", kind: kindString, positional: true, metavar: "snapshot", help: "name of existing snapshot to make current"}},
		run:     runSnapshotCurrent,
		changes: func(a *args) bool { return a.has("snapshotname") },
	},
	{
		name: "snapshot-delete", summary: "Delete a domain snapshot, merging its overlays back",
		details: "Each disk's overlay is merged into the image below it, all disks or none, and its file deleted " +
			"(unless it was given with --reuse-external); --metadata only forgets the snapshot. While a merge " +
			"runs its progress shows, as a bar on a terminal; Ctrl-C cancels it before its point of no return, " +
			"leaving every disk as it was, and a second Ctrl-C stops waiting and leaves it running.",
		opts: []option{optDomain,
			{name: "snapshotname", kind: kindString, positional: true, metavar: "snapshot", help: "snapshot name"},
			{name: "current", help: "delete current snapshot"},
			{name: "children", help: "delete snapshot and all children"},
			{name: "children-only", help: "delete children but not snapshot"},
			{name: "metadata", help: "delete only the metadata, leaving snapshot contents behind"},
			{name: "bandwidth", kind: kindString, metavar: "bytes/s",
				help: "cap each disk's merge, e.g. 50M (K, M, G, T: powers of 1024; KB, MB, GB, TB: of 1000)"},
			{name: "no-wait", help: "print the operation id and return; follow it with 'operation <id> --wait'"},
			{name: "operation", kind: kindString, metavar: "id", help: "operation id (X-Operation-ID), to read the outcome later with 'operation'"}},
		run:       runSnapshotDelete,
		changes:   always,
		following: func(a *args) bool { return !a.flag("no-wait") },
	},
	{
		name: "domfsfreeze", summary: "Freeze a domain's mounted filesystems",
		opts: []option{optDomain,
			{name: "mountpoint", kind: kindList, argv: true, metavar: "path", help: "mountpoint path to be frozen (all if none)"},
			{name: "timeout", kind: kindString, metavar: "duration", help: "thaw automatically after this long (at most the daemon's --max-freeze), e.g. 5s"}},
		run:     runDomfsfreeze,
		changes: always,
	},
	{
		name: "domfsthaw", summary: "Thaw a domain's mounted filesystems",
		opts:    []option{optDomain},
		run:     runDomfsthaw,
		changes: always,
	},
	{
		name: "domfsstatus", summary: "Show whether a domain's filesystems are frozen",
		opts:    []option{optDomain},
		run:     runDomfsstatus,
		changes: never,
	},
	{
		name: "operation", summary: "Show, follow or cancel an operation",
		details: "Operations are the mutating requests, readable by their id for at least an hour. --cancel stops a " +
			"merge before its point of no return; --wait follows an operation to its end, and fails if it failed.",
		opts: []option{{name: "id", kind: kindString, positional: true, required: true, metavar: "id", help: "operation id"},
			{name: "wait", help: "follow the operation, with its progress, until it ends; interrupt to stop following"},
			{name: "cancel", help: "cancel the operation (a merge, before its point of no return)"}},
		run:       runOperation,
		changes:   func(a *args) bool { return a.flag("cancel") },
		following: func(a *args) bool { return a.flag("wait") },
	},
	{
		name: "event", summary: "Wait for the daemon's events and print them",
		details: "As virsh's event: it prints the first event that passes the filters and exits, or with --loop " +
			"every event until interrupted or --timeout, then the number received; it fails if none came. " +
			"Types: " + strings.Join(api.EventTypes, ", ") + ". --since replays the events after a sequence " +
			"number that the daemon still keeps, first saying so if some are no longer kept.",
		opts: []option{
			{name: "domain", kind: kindString, metavar: "domain", help: "only the events of this domain"},
			{name: "type", kind: kindList, metavar: "type", help: "only events of this type (repeatable, or comma-separated)"},
			{name: "loop", help: "print every event, not only the first"},
			{name: "timeout", kind: kindString, metavar: "seconds", help: "stop waiting after this many seconds (or a duration such as 90s)"},
			{name: "since", kind: kindString, metavar: "seq", help: "first the events after this sequence number that the daemon still keeps"},
			{name: "timestamp", help: "show the time of each event"}},
		run:       runEvent,
		changes:   never,
		following: always, // a stream: no overall bound; interrupts end it
	},
	{
		name: "version", summary: "Show the client and daemon versions",
		run:     runVersion,
		changes: never,
	},
}

func runAttach(ctx context.Context, c *cli, a *args) error {
	name := a.str("domain")
	channel := a.str("agent-channel")
	switch channel {
	case "", api.AgentChannelHold, api.AgentChannelPerOperation:
	default:
		return usagef("--agent-channel must be hold or per-operation, not '%s'", channel)
	}
	d, err := c.client.Attach(ctx, api.AttachRequest{Name: name, QMP: a.str("qmp"), Agent: a.str("agent"), AgentChannel: channel})
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, d)
	}
	fmt.Fprintf(c.stdout, "Domain %s attached\n", name)
	if !d.Connected && d.Error != "" {
		fmt.Fprintf(c.stderr, "warning: domain %s is not connected: %s\n", name, d.Error)
	}
	return nil
}

func runDetach(ctx context.Context, c *cli, a *args) error {
	name := a.str("domain")
	if err := c.client.Detach(ctx, name); err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, struct{}{})
	}
	_, err := fmt.Fprintf(c.stdout, "Domain %s detached\n", name)
	return err
}

func runList(ctx context.Context, c *cli, a *args) error {
	doms, err := c.client.Domains(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, doms)
	}
	slices.SortStableFunc(doms, func(x, y api.Domain) int { return byName(x.Name, y.Name) })
	if a.flag("name") {
		for _, d := range doms {
			fmt.Fprintln(c.stdout, d.Name)
		}
		return nil
	}
	t := newTable("Name", "State", "Agent", "Frozen")
	for _, d := range doms {
		state := "disconnected"
		if d.Connected {
			state = "connected"
		}
		agent := d.AgentState
		if agent == "" { // an older daemon
			agent = yesNo(d.AgentConfigured)
		}
		t.add(d.Name, state, agent, yesNo(d.Freeze.Frozen))
	}
	return t.write(c.stdout)
}

func runDomblklist(ctx context.Context, c *cli, a *args) error {
	disks, err := c.client.Disks(ctx, a.str("domain"))
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, disks)
	}
	var t *table
	if a.flag("details") {
		t = newTable("Type", "Device", "Target", "Source")
	} else {
		t = newTable("Target", "Source")
	}
	for _, d := range disks {
		if a.flag("details") {
			t.add("file", "disk", d.Target, orDash(d.Source))
		} else {
			t.add(d.Target, orDash(d.Source))
		}
	}
	return t.write(c.stdout)
}

// createRequest is the request of snapshot-create and -create-as, less
// the XML.
func createRequest(a *args) (api.CreateSnapshotRequest, error) {
	var names []string
	for _, n := range createFlagNames {
		if a.flag(n) {
			names = append(names, n)
		}
	}
	flags, err := api.ParseFlags(names)
	if err != nil {
		return api.CreateSnapshotRequest{}, err
	}
	mode := a.str("quiesce-mode")
	switch mode {
	case "", api.QuiesceRequire, api.QuiescePrefer, api.QuiesceSkip:
	default:
		return api.CreateSnapshotRequest{}, usagef("--quiesce-mode must be require, prefer or skip, not '%s'", mode)
	}
	scope := a.str("quiesce-scope")
	switch scope {
	case "", api.QuiesceScopeAll, api.QuiesceScopeSnapshotDisks:
	default:
		return api.CreateSnapshotRequest{}, usagef("--quiesce-scope must be all or snapshot-disks, not '%s'", scope)
	}
	return api.CreateSnapshotRequest{Flags: flags, Quiesce: mode, QuiesceScope: scope}, nil
}

// snapshotXML builds the <domainsnapshot> of snapshot-create-as. As in
// virsh, without diskspecs there is no <disks> element.
func snapshotXML(name, description string, specs []diskSpec) (string, error) {
	def := libvirtxml.DomainSnapshot{Name: name, Description: description}
	if len(specs) > 0 {
		def.Disks = &libvirtxml.DomainSnapshotDisks{}
		for _, s := range specs {
			def.Disks.Disks = append(def.Disks.Disks, s.snapshotDisk())
		}
	}
	return def.Marshal()
}

func runSnapshotCreateAs(ctx context.Context, c *cli, a *args) error {
	req, err := createRequest(a)
	if err != nil {
		return err
	}
	var specs []diskSpec
	for _, s := range a.list("diskspec") {
		d, err := parseDiskspec(s)
		if err != nil {
			return &usageError{err: err}
		}
		specs = append(specs, d)
	}
	if req.XML, err = snapshotXML(a.str("name"), a.str("description"), specs); err != nil {
		return fmt.Errorf("build snapshot XML: %w", err)
	}
	if a.flag("print-xml") {
		if c.json {
			return writeJSON(c.stdout, req)
		}
		_, err := fmt.Fprintln(c.stdout, req.XML)
		return err
	}
	return c.createSnapshot(ctx, a, req, "")
}

func runSnapshotCreate(ctx context.Context, c *cli, a *args) error {
	req, err := createRequest(a)
	if err != nil {
		return err
	}
	req.XML = "<domainsnapshot/>"
	from := a.str("xmlfile")
	if from != "" {
		if req.XML, err = readXMLFile(from); err != nil {
			return err
		}
	}
	return c.createSnapshot(ctx, a, req, from)
}

func readXMLFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxXMLFile+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxXMLFile {
		return "", fmt.Errorf("%s: over %d bytes", path, maxXMLFile)
	}
	return string(b), nil
}

// quietIndications are the indications that need no warning.
var quietIndications = []string{api.IndQuiesced, api.IndNotRequested, api.IndRedefined, api.IndHalted, api.IndQuiesceScoped}

// createSnapshot sends the request under an operation id, chosen here
// if --operation is not given, so that the outcome stays readable if
// the reply is lost.
func (c *cli) createSnapshot(ctx context.Context, a *args, req api.CreateSnapshotRequest, from string) error {
	opID := a.str("operation")
	if opID == "" {
		opID = opid.New()
	}
	res, err := c.client.CreateSnapshot(ctx, a.str("domain"), req, opID)
	if err != nil {
		return lostOrNot(err, opID)
	}
	if c.json {
		return writeJSON(c.stdout, res)
	}
	if from != "" {
		fmt.Fprintf(c.stdout, "Domain snapshot %s created from '%s'\n", res.Name, from)
	} else {
		fmt.Fprintf(c.stdout, "Domain snapshot %s created\n", res.Name)
	}
	for _, ind := range res.Indications {
		if !slices.Contains(quietIndications, ind.Code) {
			fmt.Fprintf(c.stderr, "warning: %s: %s\n", ind.Code, orDash(ind.Message))
		}
	}
	return nil
}

// listPageSize is how many snapshots snapshot-list reads at a time.
const listPageSize = 500

func runSnapshotList(ctx context.Context, c *cli, a *args) error {
	for _, pair := range [][2]string{{"tree", "name"}, {"parent", "roots"}, {"parent", "tree"}, {"roots", "tree"}, {"leaves", "tree"}} {
		if err := a.exclusive(pair[0], pair[1]); err != nil {
			return err
		}
	}
	q := url.Values{}
	for _, f := range []string{api.QueryRoots, api.QueryLeaves} {
		if a.flag(f) {
			q.Set(f, "true")
		}
	}
	// Page by page, and the tree from the pages: a long list holds the
	// daemon for one page at a time, and a deep tree would nest too
	// deep for a JSON decoder.
	all, err := c.client.AllSnapshots(ctx, a.str("domain"), q, listPageSize)
	if err != nil {
		return err
	}
	list := api.SnapshotList{Snapshots: all}
	if a.flag("tree") {
		list.Tree = api.SnapshotTree(all)
	}
	if c.json {
		return writeJSON(c.stdout, list)
	}
	snaps := list.Snapshots
	if !a.flag("topological") {
		slices.SortStableFunc(snaps, func(x, y api.Snapshot) int { return byName(x.Name, y.Name) })
	}
	// virsh's columns stay as they are; a merge interrupted is said on
	// stderr, as warnings are.
	defer c.warnInterrupted(snaps)
	if a.flag("tree") {
		if !a.flag("topological") {
			sortTree(list.Tree)
		}
		return writeTree(c.stdout, list.Tree)
	}
	if a.flag("name") {
		for _, s := range snaps {
			fmt.Fprintln(c.stdout, s.Name)
		}
		return nil
	}
	t := newTable("Name", "Creation Time", "State")
	if a.flag("parent") {
		t = newTable("Name", "Creation Time", "State", "Parent")
	}
	for _, s := range snaps {
		if a.flag("parent") {
			t.add(s.Name, c.fmtTime(s.CreationTime), s.State, s.Parent)
		} else {
			t.add(s.Name, c.fmtTime(s.CreationTime), s.State)
		}
	}
	return t.write(c.stdout)
}

// printXML prints a document with one final newline.
func (c *cli) printXML(doc string) error {
	_, err := fmt.Fprintln(c.stdout, strings.TrimRight(doc, "\n"))
	return err
}

func runSnapshotDumpxml(ctx context.Context, c *cli, a *args) error {
	s, err := c.client.Snapshot(ctx, a.str("domain"), a.str("snapshotname"))
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, s)
	}
	return c.printXML(s.XML)
}

func runSnapshotCurrent(ctx context.Context, c *cli, a *args) error {
	if err := a.exclusive("name", "snapshotname"); err != nil {
		return err
	}
	domain := a.str("domain")
	if name := a.str("snapshotname"); name != "" {
		s, err := c.client.SetCurrent(ctx, domain, name)
		if err != nil {
			return err
		}
		if c.json {
			return writeJSON(c.stdout, s)
		}
		_, err = fmt.Fprintf(c.stdout, "Snapshot %s set as current\n", name)
		return err
	}
	s, err := c.client.Current(ctx, domain)
	if err != nil {
		return err
	}
	switch {
	case c.json:
		return writeJSON(c.stdout, s)
	case a.flag("name"):
		_, err = fmt.Fprintln(c.stdout, s.Name)
		return err
	}
	return c.printXML(s.XML)
}

// deleteOptions reads snapshot-delete's flags and bandwidth.
func deleteOptions(a *args) (api.DeleteOptions, error) {
	if err := a.exclusive("children", "children-only"); err != nil {
		return api.DeleteOptions{}, err
	}
	opts := api.DeleteOptions{OpID: a.str("operation")}
	for _, f := range []struct {
		opt  string
		flag api.DeleteFlags
	}{{"children", api.DeleteChildren}, {"children-only", api.DeleteChildrenOnly}, {"metadata", api.DeleteMetadataOnly}} {
		if a.flag(f.opt) {
			opts.Flags |= f.flag
		}
	}
	if bw := a.str("bandwidth"); bw != "" {
		n, err := parseBandwidth(bw)
		if err != nil {
			return api.DeleteOptions{}, err
		}
		opts.Bandwidth = n
	}
	if opts.OpID == "" {
		opts.OpID = opid.New()
	}
	return opts, nil
}

// runSnapshotDelete starts the delete as an operation and, unless
// --no-wait, follows it to its end: a merge shows its progress, and
// Ctrl-C cancels it while it can be.
func runSnapshotDelete(ctx context.Context, c *cli, a *args) error {
	if err := a.exclusive("snapshotname", "current"); err != nil {
		return err
	}
	opts, err := deleteOptions(a)
	if err != nil {
		return err
	}
	domain, name := a.str("domain"), a.str("snapshotname")
	rctx, done := c.bounded(ctx, true) // starting the delete changes state
	defer done()
	if name == "" {
		if !a.flag("current") {
			return usagef("--snapshotname or --current is required")
		}
		s, err := c.client.Current(rctx, domain)
		if err != nil {
			return err
		}
		name = s.Name
	}
	op, err := c.client.DeleteSnapshotAsync(rctx, domain, name, opts)
	if err != nil {
		return lostOrNot(err, opts.OpID)
	}
	if a.flag("no-wait") {
		if c.json {
			return writeJSON(c.stdout, op)
		}
		_, err := fmt.Fprintln(c.stdout, op.ID)
		return err
	}
	op, err = c.follow(ctx, op.ID, true)
	if err != nil {
		return err
	}
	if op.Error != nil {
		return &api.Error{Info: *op.Error}
	}
	var res api.DeleteSnapshotResponse
	if err := json.Unmarshal(op.Result, &res); err != nil {
		return fmt.Errorf("operation %s: read its result: %w", op.ID, err)
	}
	if c.json {
		return writeJSON(c.stdout, res)
	}
	if opts.Flags&api.DeleteChildrenOnly != 0 {
		fmt.Fprintf(c.stdout, "Domain snapshot %s children deleted\n", name)
	} else {
		fmt.Fprintf(c.stdout, "Domain snapshot %s deleted\n", name)
	}
	return writeMergeSummary(c.stdout, res)
}

// lostOrNot is a failed request that started an operation: the
// daemon's answer, or a connection that never came, as it is; anything
// else lost the answer, and the operation may go on.
func lostOrNot(err error, opID string) error {
	var ae *api.Error
	var ne *net.OpError
	if errors.As(err, &ae) || errors.As(err, &ne) && ne.Op == "dial" {
		return err
	}
	return &lostOpError{opID: opID, err: err}
}

func runDomfsfreeze(ctx context.Context, c *cli, a *args) error {
	timeout := a.str("timeout")
	if timeout != "" {
		if d, err := time.ParseDuration(timeout); err != nil || d <= 0 {
			return usagef("--timeout must be a positive duration such as 30s, not '%s'", timeout)
		}
	}
	res, err := c.client.FSFreeze(ctx, a.str("domain"), api.FreezeRequest{Mountpoints: a.list("mountpoint"), Timeout: timeout})
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, res)
	}
	_, err = fmt.Fprintf(c.stdout, "Froze %d filesystem(s)\n", res.Count)
	return err
}

func runDomfsthaw(ctx context.Context, c *cli, a *args) error {
	res, err := c.client.FSThaw(ctx, a.str("domain"))
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, res)
	}
	_, err = fmt.Fprintf(c.stdout, "Thawed %d filesystem(s)\n", res.Count)
	return err
}

func runDomfsstatus(ctx context.Context, c *cli, a *args) error {
	fi, err := c.client.FSStatus(ctx, a.str("domain"))
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, fi)
	}
	w := c.stdout
	if !fi.Frozen {
		field(w, "State", "thawed")
	} else {
		field(w, "State", "frozen")
		field(w, "Owner", orDash(fi.Owner))
		if fi.OpID != "" {
			field(w, "Operation", fi.OpID)
		}
		field(w, "Since", c.fmtTime(fi.Since))
		field(w, "Deadline", c.fmtTime(fi.Deadline))
	}
	if fi.ThawPending {
		field(w, "Thaw pending", "yes")
	}
	if fi.Agent != "" {
		field(w, "Agent", fi.Agent)
	}
	return nil
}

// runOperation shows an operation; --cancel cancels it first, --wait
// follows it to its end and fails if it failed.
func runOperation(ctx context.Context, c *cli, a *args) error {
	id := a.str("id")
	if a.flag("cancel") {
		rctx, done := c.bounded(ctx, true) // a cancel changes state
		defer done()
		if _, err := c.client.CancelOperation(rctx, id); err != nil {
			return err
		}
		fmt.Fprintf(c.stderr, "cancelling operation %s\n", id)
	}
	var op api.Operation
	var err error
	if a.flag("wait") {
		op, err = c.follow(ctx, id, false)
	} else {
		op, err = c.client.Operation(ctx, id)
	}
	if err != nil {
		return err
	}
	if c.json {
		err = writeJSON(c.stdout, op)
	} else {
		err = c.writeOperation(op)
	}
	if err == nil && a.flag("wait") && op.State == api.OpFailed {
		return fmt.Errorf("operation %s failed", op.ID)
	}
	return err
}

// writeOperation prints an operation's fields, then its progress, its
// error's details or a delete's merges.
func (c *cli) writeOperation(op api.Operation) error {
	w := c.stdout
	field(w, "ID", op.ID)
	field(w, "Kind", op.Kind)
	field(w, "Domain", orDash(op.Domain))
	field(w, "State", op.State)
	field(w, "Started", c.fmtTime(op.Started))
	field(w, "Ended", c.fmtTime(op.Ended))
	if p := op.Progress; p != nil {
		cancel := "cancellable"
		if !p.Cancellable {
			cancel = "past its point of no return"
		}
		field(w, "Progress", fmt.Sprintf("%d%% (%s of %s), %s", percent(p.DoneBytes, p.TotalBytes),
			humanBytes(p.DoneBytes), humanBytes(p.TotalBytes), cancel))
	}
	if op.State == api.OpSucceeded && op.Kind == api.OpSnapshotDelete {
		var res api.DeleteSnapshotResponse
		if json.Unmarshal(op.Result, &res) == nil {
			field(w, "Deleted", strings.Join(res.Deleted, ", "))
			return writeMergeSummary(w, res)
		}
	}
	if op.Error == nil {
		return nil
	}
	field(w, "Error", op.Error.Message)
	field(w, "Code", op.Error.Code)
	if d := op.Error.Details; d != nil {
		if d.Step != "" {
			field(w, "Step", d.Step)
		}
		if len(d.Deleted) > 0 {
			field(w, "Deleted", strings.Join(d.Deleted, ", "))
		}
		if len(d.Disks) > 0 {
			return writeDisks(w, d.Disks)
		}
		if len(d.Merges) > 0 {
			return writeMerges(w, d.Merges)
		}
	}
	return nil
}

func runVersion(ctx context.Context, c *cli, a *args) error {
	v, err := c.client.Version(ctx)
	if c.json {
		if err != nil {
			return err
		}
		return writeJSON(c.stdout, v)
	}
	fmt.Fprintf(c.stdout, "Client: qsnapctl %s (%s)\n", version.String(), version.Go())
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "Daemon: qsnapd %s (%s), API %s\n", v.Version, v.GoVersion, v.APIVersion)
	return err
}
