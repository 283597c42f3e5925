# Fixture of the refusal tests: a good 2-rank checkpoint, and damaged copies of it.
# cmake -DMPIRUN=... -DTRAIN=moe-train -DTOOL=train_tool -DDIR=... -P make_checkpoints.cmake
file(REMOVE_RECURSE ${DIR})
execute_process(COMMAND ${MPIRUN} -np 2 ${TRAIN} --steps 4 --batch 256 --eval-tokens 256
                        --baseline none --save ${DIR}/good --save-every 2
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "moe-train --save: exit ${rc}\n${out}\n${err}")
endif()
# SPEC version 2 (selection biases, a shared expert, group-limited routing), for the resharding
# tests.
execute_process(COMMAND ${MPIRUN} -np 2 ${TRAIN} --steps 4 --batch 240 --eval-tokens 240
                        --baseline none --save ${DIR}/good_v2 --gate sigmoid --bias-update-rate 0.001
                        --d-shared-hidden 32 --n-group 4 --topk-group 2
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "moe-train --save (v2): exit ${rc}\n${out}\n${err}")
endif()
set(second_shard step-00000004/model-00002-of-00002.safetensors)
file(COPY ${DIR}/good/ DESTINATION ${DIR}/corrupt)
execute_process(COMMAND ${TOOL} flip ${DIR}/corrupt/${second_shard} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "could not damage ${DIR}/corrupt/${second_shard}")
endif()
file(COPY ${DIR}/good/ DESTINATION ${DIR}/missing)
file(REMOVE ${DIR}/missing/${second_shard})
