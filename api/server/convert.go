package server

import (
	"slices"

	"github.com/qsnapd/qsnapd/api"
	"github.com/qsnapd/qsnapd/driver"
	"github.com/qsnapd/qsnapd/transaction"
)

// The engine's results as wire types. Each keeps nil as nil, so that
// the JSON is what the engine's own types used to give.

func toDomain(info driver.DomainInfo) api.Domain {
	return api.Domain{
		Freeze: freezeInfo(info.Freeze), AgentState: info.AgentState, Name: info.Name, QMP: info.QMP,
		Agent: info.Agent, AgentChannel: info.AgentChannel, Connected: info.Connected, Since: info.Since, QEMUVersion: info.QEMUVersion,
		UUID: info.UUID, HasTransaction: info.HasTransaction, Error: info.Error,
		AgentConfigured: info.Agent != "",
	}
}

func freezeInfo(fi driver.FreezeInfo) api.FreezeInfo {
	return api.FreezeInfo{
		Frozen: fi.Frozen, Owner: fi.Owner, OpID: fi.OpID, Since: fi.Since, Deadline: fi.Deadline,
		ThawPending: fi.ThawPending, Agent: fi.Agent,
	}
}

func outcomes(in []transaction.Outcome) []api.DiskOutcome {
	if in == nil {
		return nil
	}
	out := make([]api.DiskOutcome, len(in))
	for i, o := range in {
		out[i] = api.DiskOutcome{Target: o.Target, Source: o.Source, Overlay: o.Overlay,
			Result: api.DiskResult(o.Result), Error: o.Error}
	}
	return out
}

func indications(in []driver.Indication) []api.Indication {
	if in == nil {
		return nil
	}
	out := make([]api.Indication, len(in))
	for i, ind := range in {
		out[i] = api.Indication{Code: ind.Code, Message: ind.Message}
	}
	return out
}

func deleteResponse(res *driver.DeleteResult, id string) api.DeleteSnapshotResponse {
	out := api.DeleteSnapshotResponse{Operation: id, Deleted: res.Deleted, Disks: mergeOutcomes(res.Disks),
		MergedBytes: res.MergedBytes, TotalMS: ms(res.Total)}
	if out.Deleted == nil {
		out.Deleted = []string{}
	}
	if out.Disks == nil {
		out.Disks = []api.MergeOutcome{}
	}
	return out
}

func mergeOutcomes(in []driver.MergeOutcome) []api.MergeOutcome {
	if in == nil {
		return nil
	}
	out := make([]api.MergeOutcome, len(in))
	for i, o := range in {
		out[i] = api.MergeOutcome{Snapshot: o.Snapshot, Target: o.Target, Overlay: o.Overlay, Base: o.Base,
			Result: api.MergeResult(o.Result), FileDeleted: o.FileDeleted, Kept: o.Kept, Error: o.Error}
	}
	return out
}

func mergeInterruption(m *driver.MergeInterruption) *api.MergeInterruption {
	if m == nil {
		return nil
	}
	return &api.MergeInterruption{Operation: m.OpID, Time: m.Time, Disks: slices.Clone(m.Disks)}
}

// opKind is a journal entry's kind as the API names operations.
func opKind(kind string) string {
	if kind == driver.KindSnapshot {
		return api.OpSnapshotCreate
	}
	return kind
}
