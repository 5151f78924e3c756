"""Running a task: accepting it, claiming each step, the LLM and tool steps, how runs
end.
"""
